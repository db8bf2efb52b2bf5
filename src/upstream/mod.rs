//! Upstream side: where each intake host lives (the [`Directory`], published
//! by the control thread, read by workers without locks), how a new session
//! is opened ([`open_session`]), and the per-worker pool.
//!
//! Errors record which step failed, because the step decides the status the
//! Agent gets (DESIGN §1): no address → 503, connect or TLS → 502.

pub mod pool;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;

use crate::io::{Backend, Stream};
use crate::route::{RouteTable, UpstreamId};
use pool::PooledSession;
use tls::{TlsError, TlsSession};

/// The intake's TLS port.
pub const INTAKE_PORT: u16 = 443;

/// The addresses of one upstream host as last resolved.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub addrs: Vec<SocketAddr>,
    /// The last resolution error, kept with the last good addresses.
    pub error: Option<String>,
}

/// Addresses for every upstream, swapped whole by the control thread.
pub struct Directory {
    entries: Vec<ArcSwap<Resolved>>,
    hosts: Vec<String>,
    /// Addresses come from `upstream.override_addr`: never resolved.
    fixed: bool,
}

/// Up to this many addresses are kept per host (like the original's backends).
pub const MAX_ADDRS_PER_HOST: usize = 5;

impl Directory {
    pub fn new(routes: &RouteTable, override_addrs: &[SocketAddr]) -> Directory {
        let n = routes.upstreams.len();
        let initial = if override_addrs.is_empty() {
            Resolved { addrs: vec![], error: Some("not resolved yet".into()) }
        } else {
            Resolved { addrs: override_addrs.to_vec(), error: None }
        };
        Directory {
            entries: (0..n).map(|_| ArcSwap::from_pointee(initial.clone())).collect(),
            hosts: routes.upstreams.iter().map(|u| u.host.clone()).collect(),
            fixed: !override_addrs.is_empty(),
        }
    }

    pub fn get(&self, id: UpstreamId) -> Arc<Resolved> {
        self.entries[id].load_full()
    }

    /// Resolves every host with the system resolver (blocking; control
    /// thread only). A failed lookup keeps the last good addresses.
    pub fn refresh(&self) {
        if self.fixed {
            return;
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let previous = self.entries[i].load_full();
            let next = match (host.as_str(), INTAKE_PORT).to_socket_addrs() {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.dedup();
                    addrs.truncate(MAX_ADDRS_PER_HOST);
                    if addrs.is_empty() {
                        Resolved { addrs: previous.addrs.clone(), error: Some("no address".into()) }
                    } else {
                        if previous.addrs != addrs {
                            tracing::info!(host = %host, addrs = ?addrs, "upstream resolved");
                        }
                        Resolved { addrs, error: None }
                    }
                }
                Err(e) => {
                    if previous.error.is_none() || previous.addrs.is_empty() {
                        tracing::warn!(host = %host, error = %e, kept = previous.addrs.len(), "cannot resolve upstream host");
                    }
                    Resolved { addrs: previous.addrs.clone(), error: Some(e.to_string()) }
                }
            };
            self.entries[i].store(Arc::new(next));
        }
    }
}

/// Why a new session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no address for {host}: {why}")]
    NoAddress { host: String, why: String },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS with {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: TlsError },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    TlsTimeout { addr: SocketAddr, after: Duration },
}

impl OpenError {
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            OpenError::NoAddress { .. } => None,
            OpenError::Connect { addr, .. }
            | OpenError::ConnectTimeout { addr, .. }
            | OpenError::Tls { addr, .. }
            | OpenError::TlsTimeout { addr, .. } => Some(*addr),
        }
    }
}

/// Opens a new TLS session to `addr` with SNI `server_name`; connect and
/// handshake are each bounded by `timeout`.
pub async fn open_session<B: Backend>(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<PooledSession<B::Stream>, OpenError> {
    let stream = match tokio::time::timeout(timeout, B::connect(addr)).await {
        Err(_) => return Err(OpenError::ConnectTimeout { addr, after: timeout }),
        Ok(Err(source)) => return Err(OpenError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay();
    let session = match tokio::time::timeout(timeout, TlsSession::connect(stream, config, server_name)).await {
        Err(_) => return Err(OpenError::TlsTimeout { addr, after: timeout }),
        Ok(Err(source)) => return Err(OpenError::Tls { addr, source }),
        Ok(Ok(s)) => s,
    };
    Ok(PooledSession { session, addr, uses: 0 })
}
