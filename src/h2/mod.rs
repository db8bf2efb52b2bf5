//! HTTP/2 to the intake (issue #12): the pieces an h2 exchange is built
//! from, each without I/O so it is tested on its own.
//!
//! - [`frame`]: frames (RFC 9113 §4, §6), read in place and written into the
//!   plaintext that is sealed into TLS records;
//! - [`headers`]: the Agent's HTTP/1.1 head as an HTTP/2 field list, and
//!   the intake's answer fields checked and kept as an `AnswerHead`;
//! - [`hpack`]: header compression (RFC 7541), the relay's own;
//! - [`out`]: where frames are written, laid out in TLS record places;
//! - [`conn`]: one client connection without I/O: settings, streams,
//!   flow-control windows, PING and SETTINGS answers, GOAWAY, floods.
//!
//! The connections themselves (one task each, per worker and host) are
//! `upstream::h2pool`'s; the exchange on a stream is
//! `relay::exchange::h2`'s.

pub mod conn;
pub mod frame;
pub mod headers;
pub mod hpack;
pub mod out;
