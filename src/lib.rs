//! fipsrelay: a thread-per-core forwarder that relays the Datadog Agent's
//! plaintext HTTP/1.1 to the intake over TLS from a FIPS 140-validated
//! module (aws-lc through aws-lc-rs and rustls).
//!
//! The data path reads top to bottom: `listener` → `worker` → `relay`
//! (with `http1` for heads) → `relay::exchange::{h1, h2}` →
//! `upstream::{connect, pool, h2pool, tls}`, with `io` as the seam under
//! all of it, `rt` for timers and wake-ups, `fault` for what a failure
//! means to the Agent, and `crypto` the only place a TLS config is built.
//! `control` runs the process (start-up, workers, signals, reload, restart
//! in place); `cli` holds the one-shot commands.

pub mod admin;
pub mod buffers;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod fault;
pub mod files;
pub mod h2;
pub mod http1;
pub mod io;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod procstat;
pub mod relay;
pub mod route;
pub mod rt;
pub mod status;
#[cfg(test)]
mod testing;
pub mod upstream;
pub mod worker;
