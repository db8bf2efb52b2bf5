//! HTTP/2 to the intake (issue #12): the pieces an h2 exchange is built
//! from, each without I/O so it is tested on its own.
//!
//! - [`frame`]: frames (RFC 9113 §4, §6), read in place and written into the
//!   plaintext that is sealed into TLS records;
//! - [`headers`]: the Agent's HTTP/1.1 head as an HTTP/2 field list and the
//!   intake's answer fields as an HTTP/1.1 head;
//! - [`hpack`]: header compression (RFC 7541), the relay's own;
//! - [`conn`]: one client connection without I/O: settings, streams,
//!   flow-control windows, PING and SETTINGS answers, GOAWAY, floods.
//!
//! Not yet here: the exchange that multiplexes Agent requests on a
//! connection per worker and host (and replays streams after GOAWAY);
//! until they are, the relay speaks HTTP/1.1 to the intake and offers no
//! ALPN protocol.

pub mod conn;
pub mod frame;
pub mod headers;
pub mod hpack;
