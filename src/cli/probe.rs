//! `fipsrelay probe`: the health probe for images without a shell (ECS
//! healthCheck, Docker HEALTHCHECK). One `GET /health` (readiness) or
//! `GET /health/live` on the status port of the relay the config describes,
//! bounded by a timeout as a whole; 200 passes, anything else fails.
//!
//! It must never send more than that one request, nor wait past its timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;

/// The most of an answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Which health endpoint to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/health`: serving (not starting, not draining).
    Ready,
    /// `/health/live`: the process answers.
    Live,
}

impl Check {
    pub fn path(self) -> &'static str {
        match self {
            Check::Ready => "/health",
            Check::Live => "/health/live",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {addr}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Send(#[from] std::io::Error),
    #[error("reading the answer from {addr}")]
    Read { addr: SocketAddr, source: std::io::Error },
    #[error("{addr}{target}: {status} {body}")]
    NotHealthy { addr: SocketAddr, target: &'static str, status: String, body: String },
}

/// One GET on the status port; the line to print when it answered 200.
pub fn run(config: &Config, check: Check, timeout: Duration) -> Result<String, ProbeError> {
    let addr = SocketAddr::new(config.listen_address, config.port(0));
    let target = check.path();
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect { addr, source })?;
    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::with_capacity(4096);
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(|source| ProbeError::Read { addr, source })?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("").to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(format!("{addr}{target}: {status}"))
    } else {
        let status = if status.is_empty() { "no answer".to_string() } else { status };
        Err(ProbeError::NotHealthy { addr, target, status, body })
    }
}
