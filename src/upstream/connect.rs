//! Getting a session to an intake host for one exchange: a live pooled
//! one, or a new one on an address chosen round-robin among those that are
//! up, trying the next address when one fails (like HAProxy's retries +
//! redispatch), one probe at a time while every address is down (panic
//! mode), and every failure fed back to the address's health at once.
//!
//! A worker owns one [`Connector`]; it knows nothing of the Agent side.
//!
//! It also opens the HTTP/1.1 sessions that carry bodies too long for a
//! host's HTTP/2 window ([`Connector::open_http1`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::health::Endpoint;
use super::pool::{Lease, Pool, PooledSession};
use super::proxy::Hop;
use super::{open_session, Directory, OpenError};
use crate::config::Config;
use crate::fault::Cause;
use crate::io::Backend;
use crate::logging::summary::{About, Event, Summaries};
use crate::metrics::WorkerStats;
use crate::route::{RouteTable, UpstreamId, PRODUCTS};

/// The line of an address that failed when another is tried next.
const ADDRESS_FAILED: &str = "upstream address failed; trying the next one";
/// After an HTTP/1.1 session for a long body failed to open, how long the
/// host's long bodies stay on HTTP/2 (an intake that refuses `http/1.1` by
/// ALPN is not asked on every long body).
const HTTP1_RETRY: Duration = Duration::from_secs(60);

/// Why no session could be had for an exchange.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address of the host is marked down by the health checks.
    #[error("all {count} addresses of {host} are down")]
    AllDown { host: String, count: usize },
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl ConnectError {
    /// The step that failed (status code and metric).
    pub fn cause(&self) -> Cause {
        match self {
            ConnectError::AllDown { .. } => Cause::Down,
            ConnectError::Open(e) => open_error_cause(e),
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            ConnectError::AllDown { .. } => None,
            ConnectError::Open(e) => e.addr(),
        }
    }
}

/// The step a failed connect or handshake counts as.
pub fn open_error_cause(e: &OpenError) -> Cause {
    match e {
        OpenError::NoAddress { .. } => Cause::Unresolved,
        OpenError::Connect { .. } => Cause::Connect,
        OpenError::LocalResources { .. } => Cause::LocalResources,
        OpenError::ConnectTimeout { .. } => Cause::ConnectTimeout,
        OpenError::Tls { .. }
        | OpenError::TlsTimeout { .. }
        | OpenError::TunnelTls { .. }
        | OpenError::TunnelTlsTimeout { .. } => Cause::Tls,
        OpenError::Proxy { .. } => Cause::Proxy,
    }
}

/// A lent session, and whether it came from the pool (then it may turn out
/// dead on its first write, and the exchange tries once more on a new one).
pub type Acquired<'a, B> = (Lease<'a, Hop<<B as Backend>::Stream>>, bool);

/// A worker's way to the intake hosts: their addresses and health (shared,
/// published by the control thread), the TLS config, and the worker's own
/// pool of idle HTTP/1.1 sessions.
pub struct Connector<B: Backend> {
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub directory: Arc<Directory>,
    pub tls: Arc<ClientConfig>,
    /// `tls` offering only `http/1.1` by ALPN: the sessions of
    /// [`Connector::open_http1`].
    tls_http1: Arc<ClientConfig>,
    pub pool: RefCell<Pool<Hop<B::Stream>>>,
    /// Per host: when [`Connector::open_http1`] last failed.
    http1_failed: Vec<Cell<Option<Instant>>>,
    /// Round robin over a host's addresses.
    next_addr: Cell<usize>,
    /// The worker's log summaries: an address that failed, or an HTTP/2
    /// connection cut, is counted there.
    pub log: Rc<Summaries>,
}

impl<B: Backend> Connector<B> {
    pub fn new(
        config: Arc<Config>,
        routes: Arc<RouteTable>,
        directory: Arc<Directory>,
        tls: Arc<ClientConfig>,
        log: Rc<Summaries>,
    ) -> Self {
        let pool = Pool::new(routes.upstreams.len(), config.max_idle_per_host, config.upstream_idle_timeout);
        let tls_http1 = crate::crypto::with_alpn(&tls, &[crate::crypto::ALPN_HTTP1]);
        let http1_failed = (0..routes.upstreams.len()).map(|_| Cell::new(None)).collect();
        Connector {
            config,
            routes,
            directory,
            tls,
            tls_http1,
            pool: RefCell::new(pool),
            http1_failed,
            next_addr: Cell::new(0),
            log,
        }
    }

    /// Opens one HTTP/1.1 session to host `upstream` (only `http/1.1`
    /// offered by ALPN) on the next address that is up and leaves it idle
    /// in the pool, for a request body too long for the host's HTTP/2
    /// window (`relay::exchange`), which takes it next. False when none
    /// could be had: no address up, a failed connect or handshake, or the
    /// intake insisting on h2; then no other is tried for [`HTTP1_RETRY`].
    /// A failure is logged at debug level and not counted against the
    /// address: the request still goes (over HTTP/2), and an intake that
    /// speaks only h2 is healthy.
    pub async fn open_http1(&self, upstream: UpstreamId) -> bool {
        let failed = &self.http1_failed[upstream];
        if failed.get().is_some_and(|t| t.elapsed() < HTTP1_RETRY) {
            return false;
        }
        let resolved = self.directory.get(upstream);
        let n = resolved.endpoints.len();
        let first = self.next_addr.get();
        self.next_addr.set(first.wrapping_add(1));
        let Some(endpoint) = (0..n).map(|k| &resolved.endpoints[(first + k) % n]).find(|e| e.is_up()) else {
            return false;
        };
        let addr = endpoint.addr;
        let dial = self.directory.dial(upstream, addr);
        let opened =
            open_session::<B>(dial, self.tls_http1.clone(), self.server_name(upstream), self.config.connect_timeout)
                .await;
        match opened {
            Ok(mut s) if !s.session.is_h2() => {
                s.endpoint = Some(endpoint.clone());
                Lease::opened(&self.pool, upstream, s).give_back(Instant::now());
                tracing::debug!(upstream = self.host(upstream), %addr, "HTTP/1.1 session opened for a body longer than the HTTP/2 window");
                true
            }
            Ok(_) => {
                failed.set(Some(Instant::now()));
                false
            }
            Err(e) => {
                tracing::debug!(upstream = self.host(upstream), %addr, error = %e, "no HTTP/1.1 session for a body longer than the HTTP/2 window");
                failed.set(Some(Instant::now()));
                false
            }
        }
    }

    pub fn host(&self, id: UpstreamId) -> &str {
        &self.routes.upstreams[id].host
    }

    pub fn server_name(&self, id: UpstreamId) -> &str {
        self.config.server_name_for(self.host(id))
    }

    /// Takes a live pooled session (when `allow_pooled`) or opens a new one
    /// for a request on port `offset`; `stats` counts pool hits and the
    /// failed addresses tried on the way.
    pub async fn acquire(
        &self,
        stats: &RefCell<WorkerStats>,
        offset: u16,
        upstream: UpstreamId,
        allow_pooled: bool,
    ) -> Result<Acquired<'_, B>, ConnectError> {
        if allow_pooled {
            if let Some(s) = self.take_pooled(stats, offset, upstream) {
                return Ok((Lease::taken(&self.pool, upstream, s), true));
            }
        }
        let resolved = self.directory.get(upstream);
        if resolved.endpoints.is_empty() {
            let why = resolved.error.clone().unwrap_or_else(|| "no address".into());
            return Err(OpenError::NoAddress { host: self.host(upstream).to_string(), why }.into());
        }
        let first = self.next_addr.get();
        self.next_addr.set(first.wrapping_add(1));
        let session = if resolved.up_count() == 0 {
            self.probe_in_panic(upstream, &resolved.endpoints, first).await?
        } else {
            self.open_round_robin(stats, offset, upstream, &resolved.endpoints, first).await?
        };
        Ok((Lease::opened(&self.pool, upstream, session), false))
    }

    fn take_pooled(
        &self,
        stats: &RefCell<WorkerStats>,
        offset: u16,
        upstream: UpstreamId,
    ) -> Option<PooledSession<Hop<B::Stream>>> {
        let (session, _dropped) = self.pool.borrow_mut().take(upstream, Instant::now());
        let mut st = stats.borrow_mut();
        match session {
            Some(s) => {
                st.product(offset).pool_hits += 1;
                Some(s)
            }
            None => {
                st.product(offset).pool_misses += 1;
                None
            }
        }
    }

    fn all_down(&self, upstream: UpstreamId, count: usize) -> ConnectError {
        ConnectError::AllDown { host: self.host(upstream).to_string(), count }
    }

    /// Panic mode: no address is up. One request at a time per host,
    /// `PANIC_PROBE_EVERY` apart, still tries a real connect and handshake,
    /// so a blip of the intake ends as soon as it listens again instead of
    /// waiting for the checks; every other request is refused at once.
    async fn probe_in_panic(
        &self,
        upstream: UpstreamId,
        endpoints: &[Arc<Endpoint>],
        first: usize,
    ) -> Result<PooledSession<Hop<B::Stream>>, ConnectError> {
        let n = endpoints.len();
        let probe = if self.directory.health.enabled { self.directory.take_panic_probe(upstream) } else { None };
        let Some(_probe) = probe else { return Err(self.all_down(upstream, n)) };
        let endpoint = &endpoints[first % n];
        let addr = endpoint.addr;
        // Connect and handshake together within upstream.connect_timeout:
        // no request waits longer than that while the host is down.
        let limit = self.config.connect_timeout;
        let open =
            open_session::<B>(self.directory.dial(upstream, addr), self.tls.clone(), self.server_name(upstream), limit);
        let opened =
            crate::rt::timeout(limit, open).await.unwrap_or(Err(OpenError::ConnectTimeout { addr, after: limit }));
        match opened {
            Ok(mut s) => {
                self.directory.revived(upstream, endpoint);
                s.endpoint = Some(endpoint.clone());
                tracing::debug!(upstream = self.host(upstream), %addr, "panic probe connected");
                Ok(s)
            }
            Err(e) => {
                self.directory.connect_failed(upstream, endpoint, &e);
                Err(e.into())
            }
        }
    }

    /// Round-robin over the host's addresses that are up; a failed connect
    /// or handshake (nothing of the request written yet) moves on to the
    /// next one, up to `upstream.retries` more times, and counts against
    /// the address's health at once; a connect that found the relay out of
    /// descriptors ends the attempt and counts against nothing.
    async fn open_round_robin(
        &self,
        stats: &RefCell<WorkerStats>,
        offset: u16,
        upstream: UpstreamId,
        endpoints: &[Arc<Endpoint>],
        first: usize,
    ) -> Result<PooledSession<Hop<B::Stream>>, ConnectError> {
        let n = endpoints.len();
        let up = endpoints.iter().filter(|e| e.is_up()).count();
        let attempts = up.min(1 + self.config.retries);
        // Stays so if every address goes down while the others are tried.
        let mut failure = self.all_down(upstream, n);
        let candidates = (0..n).map(|k| &endpoints[(first + k) % n]).filter(|e| e.is_up()).take(attempts);
        for (tried, endpoint) in candidates.enumerate() {
            let addr = endpoint.addr;
            let dial = self.directory.dial(upstream, addr);
            match open_session::<B>(dial, self.tls.clone(), self.server_name(upstream), self.config.connect_timeout)
                .await
            {
                Ok(mut s) => {
                    endpoint.connected();
                    s.endpoint = Some(endpoint.clone());
                    tracing::debug!(upstream = self.host(upstream), %addr, tls = %s.session.describe(), "upstream session opened");
                    return Ok(s);
                }
                // Out of descriptors: the next address would fail the same
                // way, and this one is not to blame.
                Err(e) if e.is_local() => return Err(e.into()),
                Err(e) => {
                    self.directory.connect_failed(upstream, endpoint, &e);
                    if tried + 1 < attempts {
                        let cause = open_error_cause(&e);
                        stats.borrow_mut().record_error(offset, cause);
                        let (product, host) = (PRODUCTS[offset as usize].name, self.host(upstream));
                        let event =
                            Event { what: ADDRESS_FAILED, product, about: About::Upstream(host), cause: cause.label() };
                        crate::count_or_log!(warn, self.log, event, || format!("{addr}: {e}"), product, upstream = host, %addr, cause = cause.label(), error = %e, "{ADDRESS_FAILED}");
                    }
                    failure = e.into();
                }
            }
        }
        Err(failure)
    }
}
