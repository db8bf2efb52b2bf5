//! Test and benchmark tooling for fipsrelay: a mock Datadog intake that
//! terminates TLS and counts and hashes what it receives (`mock`), the PKI
//! it serves with (`pki`), the body hash shared with the load generator
//! (`hash`), the fixed-size digest of body hashes that `--verify` compares
//! (`digest`), a tiny blocking HTTP/1.1 client for tests (`client`), a
//! duration parser for command lines (`duration`), the load generator
//! behind the `loadgen` binary (`load`) and a mock DNS server answering from
//! a zone file, for tests of DNS re-resolution (`dns`), and a WAN link
//! emulator (delay each way, optional bandwidth cap) behind `wanlink` (`wan`). Nothing here is used by
//! the relay at run time, and nothing here may enable aws-lc: every rustls
//! config in this crate is built with the ring provider, explicitly.

pub mod client;
pub mod digest;
pub mod dns;
pub mod duration;
pub mod hash;
pub mod load;
pub mod mock;
pub mod pki;
pub mod wan;
mod wire;
