//! Upstream side: where each intake host lives (the [`Directory`], published
//! by the control thread, read by workers without locks), how a new session
//! is opened ([`open_session`]); a worker's way to a session for an exchange
//! ([`connect`], with its pool of idle HTTP/1.1 sessions, [`pool`]) and its
//! HTTP/2 connections ([`h2pool`]).
//!
//! Errors record which step failed, because the step decides the status the
//! Agent gets (DESIGN §1): no address → 503, connect or TLS → 502.

pub mod connect;
pub mod dns;
pub mod h2pool;
pub mod health;
pub mod pool;
pub mod proxy;
pub mod records;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ClientConfig;

use crate::config::HealthConfig;
use crate::io::{Backend, Stream};
use crate::route::{RouteTable, UpstreamId};
use health::Endpoint;
use pool::PooledSession;
use proxy::{Hop, Proxy, ProxyError};
use tls::{TlsError, TlsSession};

/// The addresses of one upstream host as last resolved, each with its health.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The last resolution error, kept with the last good addresses.
    pub error: Option<String>,
}

impl Resolved {
    pub fn up_count(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_up()).count()
    }
}

/// Addresses for every upstream, swapped whole by the control thread.
pub struct Directory {
    entries: Vec<ArcSwap<Resolved>>,
    hosts: Vec<String>,
    /// Addresses come from `upstream.override_addr`: never resolved.
    fixed: bool,
    pub health: HealthConfig,
    /// Per host: panic mode's probe slot (see [`Directory::take_panic_probe`]).
    panic: Vec<PanicProbe>,
    /// The clock of the probe slots.
    started: std::time::Instant,
    /// The egress proxy, if any, and which hosts go through it (`no_proxy`).
    proxy: Option<Arc<Proxy>>,
    via_proxy: Vec<bool>,
    /// Wakes the health checker when a check became due sooner than it
    /// planned (an address went down on the data path, new addresses, a
    /// check rescheduled): it sleeps until the next check otherwise.
    pub health_wake: tokio::sync::Notify,
    /// The intake's TLS port (the CONNECT target's port).
    port: u16,
}

/// How a session to one endpoint of a host is opened.
pub struct Dial<'a> {
    /// The endpoint: an intake address, or the proxy's when the proxy
    /// resolves the intake's name.
    pub endpoint: SocketAddr,
    /// Through the proxy, with this CONNECT target (`host:port`).
    pub via: Option<(&'a Proxy, String)>,
}

impl Dial<'static> {
    pub fn direct(addr: SocketAddr) -> Self {
        Dial { endpoint: addr, via: None }
    }
}

/// Panic mode of one host: when it has no address up, one request per
/// [`PANIC_PROBE_EVERY`], across all workers, still tries a real connect.
#[derive(Default)]
pub struct PanicProbe {
    /// When the next probe may start, in ms since the directory was made.
    next_ms: std::sync::atomic::AtomicU64,
    /// Probes started so far (`/metrics`).
    pub probes: std::sync::atomic::AtomicU64,
}

/// The one panic-mode probe in flight for a host; dropping it (the probe
/// ended, or its request was dropped) allows the next after [`PANIC_PROBE_EVERY`].
pub struct PanicProbeGuard<'a> {
    directory: &'a Directory,
    id: UpstreamId,
}

impl Drop for PanicProbeGuard<'_> {
    fn drop(&mut self) {
        let d = self.directory;
        let next = d.started.elapsed().as_millis() as u64 + PANIC_PROBE_EVERY.as_millis() as u64;
        d.panic[self.id].next_ms.store(next, std::sync::atomic::Ordering::Release);
    }
}

/// In panic mode, at most one request per host this often tries to connect.
pub const PANIC_PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Up to this many addresses are kept per host (like the original's backends).
pub const MAX_ADDRS_PER_HOST: usize = 5;

impl Directory {
    pub fn new(routes: &RouteTable, override_addrs: &[SocketAddr], health: HealthConfig) -> Directory {
        let entries = routes
            .upstreams
            .iter()
            .map(|_| {
                // Each host gets its own endpoints, even for shared override
                // addresses: health is per host and address (SNI differs).
                ArcSwap::from_pointee(if override_addrs.is_empty() {
                    Resolved { endpoints: vec![], error: Some("not resolved yet".into()) }
                } else {
                    Resolved {
                        endpoints: override_addrs.iter().map(|a| Arc::new(Endpoint::new(*a))).collect(),
                        error: None,
                    }
                })
            })
            .collect();
        Directory {
            entries,
            hosts: routes.upstreams.iter().map(|u| u.host.clone()).collect(),
            fixed: !override_addrs.is_empty(),
            health,
            panic: routes.upstreams.iter().map(|_| PanicProbe::default()).collect(),
            started: std::time::Instant::now(),
            proxy: None,
            via_proxy: routes.upstreams.iter().map(|_| false).collect(),
            port: crate::config::DEFAULT_UPSTREAM_PORT,
            health_wake: tokio::sync::Notify::new(),
        }
    }

    /// Sends the hosts that `no_proxy` does not name through `proxy`, whose
    /// CONNECT targets use port `port`. Unless the proxy's config says
    /// `resolve_locally`, those hosts' endpoints are the proxy's addresses
    /// (set now for a proxy given by IP address, else by
    /// [`resolve_proxy_forever`]): the proxy resolves the intake names.
    pub fn with_proxy(mut self, proxy: Arc<Proxy>, port: u16) -> Self {
        self.port = port;
        for (id, host) in self.hosts.iter().enumerate() {
            self.via_proxy[id] = proxy.config.applies_to(host);
        }
        self.proxy = Some(proxy.clone());
        if !proxy.config.resolve_locally && !proxy.needs_lookup() {
            self.apply_proxy_addrs(Ok(proxy.addrs().to_vec()));
        }
        self
    }

    /// The egress proxy, if one is configured.
    pub fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.proxy.as_ref()
    }

    /// Whether host `id` goes through the proxy.
    pub fn via_proxy(&self, id: UpstreamId) -> bool {
        self.via_proxy[id]
    }

    /// Whether host `id`'s name is resolved here (by a [`resolve_forever`] task).
    pub fn resolves_locally(&self, id: UpstreamId) -> bool {
        !self.fixed && (!self.via_proxy[id] || self.proxy.as_ref().is_some_and(|p| p.config.resolve_locally))
    }

    /// Whether the proxy's name must be resolved (by [`resolve_proxy_forever`]).
    pub fn proxy_needs_lookup(&self) -> bool {
        self.proxy.as_ref().is_some_and(|p| p.needs_lookup()) && self.via_proxy.iter().any(|v| *v)
    }

    /// How to open a session to `endpoint` of host `id`.
    pub fn dial(&self, id: UpstreamId, endpoint: SocketAddr) -> Dial<'_> {
        let via = match (&self.proxy, self.via_proxy[id]) {
            (Some(p), true) => {
                let authority = if p.config.resolve_locally {
                    endpoint.to_string()
                } else {
                    format!("{}:{}", self.hosts[id], self.port)
                };
                Some((&**p, authority))
            }
            _ => None,
        };
        Dial { endpoint, via }
    }

    /// Applies a lookup of the proxy's name: its addresses are the
    /// endpoints of every host the proxy resolves.
    pub fn apply_proxy_addrs(&self, lookup: Result<Vec<SocketAddr>, String>) {
        let Some(proxy) = &self.proxy else { return };
        if let Ok(addrs) = &lookup {
            let mut addrs = addrs.clone();
            addrs.dedup();
            addrs.truncate(MAX_ADDRS_PER_HOST);
            if *proxy.addrs() != addrs {
                tracing::info!(proxy = %proxy.display, addrs = ?addrs, "proxy resolved");
            }
            proxy.set_addrs(addrs);
        } else if let Err(e) = &lookup {
            // Once per new error, not at every retry.
            if proxy.note_lookup_error(e) {
                tracing::warn!(proxy = %proxy.display, error = %e, "cannot resolve the proxy's host name; keeping its last addresses");
            }
        }
        if lookup.is_ok() {
            proxy.note_lookup_ok();
        }
        if proxy.config.resolve_locally {
            return;
        }
        for id in 0..self.hosts.len() {
            if self.via_proxy[id] {
                self.apply_quiet(id, lookup.clone(), false);
            }
        }
    }

    /// Host `id` has addresses and none is up: panic mode.
    pub fn in_panic(&self, id: UpstreamId) -> bool {
        let r = self.get(id);
        !r.endpoints.is_empty() && r.up_count() == 0
    }

    /// In panic mode, whether this request may be the host's probe: one at
    /// a time across workers (a compare-and-swap), the next no sooner than
    /// [`PANIC_PROBE_EVERY`] after the last one ended; the others get 503
    /// without trying. The probe's slot is released when the guard drops.
    pub fn take_panic_probe(&self, id: UpstreamId) -> Option<PanicProbeGuard<'_>> {
        use std::sync::atomic::Ordering;
        let slot = &self.panic[id];
        let now = self.started.elapsed().as_millis() as u64;
        let next = slot.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        // u64::MAX: a probe is in flight.
        slot.next_ms.compare_exchange(next, u64::MAX, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        slot.probes.fetch_add(1, Ordering::Relaxed);
        Some(PanicProbeGuard { directory: self, id })
    }

    /// Probes started in panic mode for host `id`.
    pub fn panic_probes(&self, id: UpstreamId) -> u64 {
        self.panic[id].probes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A request in panic mode connected to `endpoint`: it is up again.
    pub fn revived(&self, id: UpstreamId, endpoint: &Endpoint) {
        if let Some(t) = endpoint.revive() {
            health::log_transition(self, id, endpoint.addr, t, "a request connected in panic mode");
        }
    }

    pub fn get(&self, id: UpstreamId) -> Arc<Resolved> {
        self.entries[id].load_full()
    }

    pub fn host(&self, id: UpstreamId) -> &str {
        &self.hosts[id]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether addresses come from `upstream.override_addr` (never resolved).
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Applies a lookup: new addresses replace the old ones (an address in
    /// both keeps its health); a failure keeps the last good addresses.
    pub fn apply(&self, id: UpstreamId, lookup: Result<Vec<SocketAddr>, String>) {
        self.apply_quiet(id, lookup, true)
    }

    /// [`Directory::apply`], logging changes only with `log`.
    fn apply_quiet(&self, id: UpstreamId, lookup: Result<Vec<SocketAddr>, String>, log: bool) {
        let previous = self.entries[id].load_full();
        let host = &self.hosts[id];
        let next = match lookup {
            Ok(mut addrs) => {
                addrs.dedup();
                addrs.truncate(MAX_ADDRS_PER_HOST);
                let endpoints: Vec<Arc<Endpoint>> = addrs
                    .iter()
                    .map(|a| {
                        previous
                            .endpoints
                            .iter()
                            .find(|e| e.addr == *a)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Endpoint::new(*a)))
                    })
                    .collect();
                for gone in previous.endpoints.iter().filter(|e| !addrs.contains(&e.addr)) {
                    gone.retire();
                }
                let old: Vec<SocketAddr> = previous.endpoints.iter().map(|e| e.addr).collect();
                if !log {
                } else if old != addrs {
                    tracing::info!(upstream = %host, addrs = ?addrs, previous = ?old, "upstream resolved");
                } else if previous.error.is_some() {
                    tracing::info!(upstream = %host, addrs = ?addrs, "upstream resolves again");
                }
                Resolved { endpoints, error: None }
            }
            Err(e) => {
                if !log {
                } else if previous.endpoints.is_empty() {
                    if previous.error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(upstream = %host, error = %e, "cannot resolve upstream host; requests to it get 503 until it resolves");
                    }
                } else if previous.error.is_none() {
                    tracing::warn!(upstream = %host, error = %e, kept = previous.endpoints.len(), "cannot resolve upstream host; keeping the last good addresses");
                }
                Resolved { endpoints: previous.endpoints.clone(), error: Some(e) }
            }
        };
        self.entries[id].store(Arc::new(next));
        // New addresses are due for a check now.
        self.health_wake.notify_one();
    }

    /// A connect or handshake to `endpoint` failed on the data path: it
    /// counts as a failed check at once.
    /// A failure of the relay's own (out of descriptors) is not the
    /// address's: it is not counted.
    pub fn connect_failed(&self, id: UpstreamId, endpoint: &Endpoint, error: &OpenError) {
        if error.is_local() {
            return;
        }
        if let Some(t) = endpoint.failed(&self.health) {
            health::log_transition(self, id, endpoint.addr, t, &health::reason(error));
            // Down: checked again from health.down_interval on.
            self.health_wake.notify_one();
        }
    }
}

/// Resolves host `id` now and then forever: every `dns.refresh`, sooner
/// when the answer's TTL is shorter, every few seconds while it fails.
/// Whether the first lookup succeeded is sent on `first` (for the bounded wait at start).
pub async fn resolve_forever(
    directory: Arc<Directory>,
    resolver: Arc<dns::Resolver>,
    id: UpstreamId,
    refresh: Duration,
    port: u16,
    first: tokio::sync::mpsc::UnboundedSender<bool>,
) {
    let mut first = Some(first);
    loop {
        let host = directory.host(id).to_string();
        let result = resolver.lookup(&host).await;
        let wait = match &result {
            Ok(a) => dns::next_refresh(Instant::now(), refresh, a.valid_until),
            Err(_) => dns::retry_after_failure(refresh),
        };
        let ok = result.is_ok();
        directory.apply(id, result.map(|a| dns::socket_addrs(&a.ips, port, MAX_ADDRS_PER_HOST)));
        if let Some(tx) = first.take() {
            let _ = tx.send(ok);
        }
        tracing::trace!(upstream = %host, next_in = ?wait, "next DNS lookup scheduled");
        crate::rt::sleep(wait).await;
    }
}

/// Resolves the proxy's host name now and then forever, like
/// [`resolve_forever`]; its addresses feed every host it resolves.
pub async fn resolve_proxy_forever(
    directory: Arc<Directory>,
    resolver: Arc<dns::Resolver>,
    refresh: Duration,
    first: tokio::sync::mpsc::UnboundedSender<bool>,
) {
    let Some(proxy) = directory.proxy().cloned() else { return };
    let mut first = Some(first);
    loop {
        let result = resolver.lookup(&proxy.config.host).await;
        let wait = match &result {
            Ok(a) => dns::next_refresh(Instant::now(), refresh, a.valid_until),
            Err(_) => dns::retry_after_failure(refresh),
        };
        let ok = result.is_ok();
        directory.apply_proxy_addrs(
            result
                .map(|a| dns::socket_addrs(&a.ips, proxy.config.port, MAX_ADDRS_PER_HOST))
                .map_err(|e| format!("proxy {}: {e}", proxy.display)),
        );
        if let Some(tx) = first.take() {
            let _ = tx.send(ok);
        }
        crate::rt::sleep(wait).await;
    }
}

/// Why a new session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no address for {host}: {why}")]
    NoAddress { host: String, why: String },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    /// No socket for the connect: the relay's own descriptors ran out
    /// (EMFILE, ENFILE). The relay's side, never the address's health.
    #[error("no socket for a connect to {addr}: {source}; the relay is out of descriptors: raise LimitNOFILE (ulimit -n) or lower limits.max_connections")]
    LocalResources { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS with {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: TlsError },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    TlsTimeout { addr: SocketAddr, after: Duration },
    /// The proxy hop failed (connect, TLS to the proxy, CONNECT).
    #[error("{source}")]
    Proxy { addr: SocketAddr, source: ProxyError },
    #[error("TLS with {target} through proxy {proxy} failed: {source}")]
    TunnelTls { addr: SocketAddr, target: String, proxy: String, source: TlsError },
    #[error("TLS handshake with {target} through proxy {proxy} timed out after {after:?}")]
    TunnelTlsTimeout { addr: SocketAddr, target: String, proxy: String, after: Duration },
}

impl OpenError {
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            OpenError::NoAddress { .. } => None,
            OpenError::Connect { addr, .. }
            | OpenError::LocalResources { addr, .. }
            | OpenError::ConnectTimeout { addr, .. }
            | OpenError::Tls { addr, .. }
            | OpenError::TlsTimeout { addr, .. }
            | OpenError::Proxy { addr, .. }
            | OpenError::TunnelTls { addr, .. }
            | OpenError::TunnelTlsTimeout { addr, .. } => Some(*addr),
        }
    }

    /// The relay's own resources failed, not the address: it must not count
    /// against the address's health.
    pub fn is_local(&self) -> bool {
        matches!(self, OpenError::LocalResources { .. })
    }

    /// A failed connect: out of descriptors is the relay's side, anything
    /// else the address's.
    pub fn connect(addr: SocketAddr, source: std::io::Error) -> OpenError {
        if is_out_of_descriptors(&source) {
            OpenError::LocalResources { addr, source }
        } else {
            OpenError::Connect { addr, source }
        }
    }
}

/// EMFILE (this process) or ENFILE (the whole system): no descriptor left.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Opens a new TLS session as `dial` says: straight to the endpoint, or
/// through the proxy's CONNECT tunnel; SNI and the certificate check are
/// `server_name` either way. Each step (connect, proxy TLS, CONNECT answer,
/// intake handshake) is bounded by `timeout`.
pub async fn open_session<B: Backend>(
    dial: Dial<'_>,
    config: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<PooledSession<Hop<B::Stream>>, OpenError> {
    let addr = dial.endpoint;
    let stream = match &dial.via {
        None => match crate::rt::timeout(timeout, B::connect(addr)).await {
            Err(_) => return Err(OpenError::ConnectTimeout { addr, after: timeout }),
            Ok(Err(source)) => return Err(OpenError::connect(addr, source)),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay();
                Hop::Tcp(s)
            }
        },
        Some((proxy, authority)) => {
            let connect_to = if proxy.config.resolve_locally {
                proxy.pick_addr().ok_or_else(|| OpenError::NoAddress {
                    host: proxy.display.clone(),
                    why: "the proxy's host name has not resolved".into(),
                })?
            } else {
                addr
            };
            proxy.open_tunnel::<B>(connect_to, authority, timeout).await.map_err(|source| match source {
                // No socket for the proxy either: the relay's side too.
                ProxyError::Connect { source, .. } if is_out_of_descriptors(&source) => {
                    OpenError::LocalResources { addr, source }
                }
                source => OpenError::Proxy { addr, source },
            })?
        }
    };
    let session = match crate::rt::timeout(timeout, TlsSession::connect(stream, config, server_name)).await {
        Err(_) => {
            return Err(match &dial.via {
                None => OpenError::TlsTimeout { addr, after: timeout },
                Some((p, target)) => OpenError::TunnelTlsTimeout {
                    addr,
                    target: target.clone(),
                    proxy: p.display.clone(),
                    after: timeout,
                },
            })
        }
        Ok(Err(source)) => {
            return Err(match &dial.via {
                None => OpenError::Tls { addr, source },
                Some((p, target)) => {
                    OpenError::TunnelTls { addr, target: target.clone(), proxy: p.display.clone(), source }
                }
            })
        }
        Ok(Ok(s)) => s,
    };
    Ok(PooledSession { session, addr, uses: 0, endpoint: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with health on and `health.fall = 1`: one counted
    /// failure takes an address down.
    fn directory() -> Directory {
        let raw = crate::config::parse_str(
            "[upstream]\noverride_addr = \"127.0.0.1:443\"\n[health]\nenabled = true\nfall = 1\n",
        )
        .unwrap();
        let config = raw.validate().unwrap();
        Directory::new(&RouteTable::new(&config), &config.override_addrs, config.health)
    }

    #[test]
    fn out_of_descriptors_is_the_relays_side_and_never_takes_an_address_down() {
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        for errno in [libc::EMFILE, libc::ENFILE] {
            let e = OpenError::connect(addr, std::io::Error::from_raw_os_error(errno));
            assert!(e.is_local(), "{e}");
            assert_eq!(connect::open_error_cause(&e), crate::fault::Cause::LocalResources);
            assert!(e.to_string().contains("LimitNOFILE"), "{e}");
        }
        let refused = OpenError::connect(addr, std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(!refused.is_local());
        assert_eq!(connect::open_error_cause(&refused), crate::fault::Cause::Connect);

        let dir = directory();
        let endpoint = dir.get(0).endpoints[0].clone();
        let local = OpenError::connect(addr, std::io::Error::from_raw_os_error(libc::EMFILE));
        for _ in 0..5 {
            dir.connect_failed(0, &endpoint, &local);
        }
        assert!(endpoint.is_up(), "EMFILE took the address down");
        dir.connect_failed(0, &endpoint, &refused);
        assert!(!endpoint.is_up(), "a refused connect counts (health.fall = 1)");
    }
}
