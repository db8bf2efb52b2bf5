//! A worker's HTTP/2 connections to the intake (`upstream.protocol = h2 |
//! auto`), per host: many Agent requests share a few TLS sessions, at most
//! `upstream.h2_max_connections` per host.
//!
//! [`H2Hosts::connection`] picks a live connection with room for a stream,
//! or opens one (through the worker's [`Connector`], so address choice,
//! retries and health feedback are those of HTTP/1.1), or says the host
//! picked HTTP/1.1 by ALPN. Each connection is one task ([`drive`]) that
//! owns the TLS session: every turn it writes all the frames the exchanges
//! queued, then reads and files what it read under each stream
//! ([`conn::H2Conn`]). The exchange itself is the relay's
//! (`relay::exchange::h2`).
//!
//! # Liveness and queueing
//! A connection from which nothing has been read for half of
//! `upstream.idle_timeout` is sent a PING (by its task when idle, or by the
//! next exchange that would use it, which waits for the ACK); no ACK within
//! `upstream.connect_timeout` ends it. While every connection of a host is
//! at the intake's stream limit, exchanges wait for a stream, at most
//! `upstream.h2_max_queued` of them ([`H2Hosts::enqueue`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::connect::{ConnectError, Connector};
use super::pool::PooledSession;
use super::proxy::Hop;
use crate::config::UpstreamProtocol;
use crate::fault::Cause;
use crate::h2::conn::{Conn, LocalSettings};
use crate::io::Backend;
use crate::metrics::WorkerStats;
use crate::route::UpstreamId;
use crate::rt::{Mark, Signal};

pub mod conn;
mod drive;

use conn::H2Conn;
use drive::{drive, Shared, Timeouts};

/// After an intake picked HTTP/1.1 by ALPN (`auto`), how long its host is
/// served over HTTP/1.1 before ALPN is offered again.
const HTTP1_RECHECK: Duration = Duration::from_secs(300);

/// What a worker's HTTP/2 connections to one host did, for `/metrics` and
/// the bench (frames and requests per write).
#[derive(Default)]
pub struct H2Counters {
    /// TLS writes (each carrying every frame queued since the last one).
    pub writes: Cell<u64>,
    pub frames: Cell<u64>,
    /// Streams opened (requests, replays included).
    pub streams: Cell<u64>,
    /// Requests sent again after the intake refused them unprocessed.
    pub replays: Cell<u64>,
    /// Liveness PINGs sent.
    pub pings: Cell<u64>,
    /// Request bodies longer than a new stream's window that went over an
    /// HTTP/1.1 session instead ([`H2Hosts::window_short`]).
    pub window_detours: Cell<u64>,
}

pub fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Why no HTTP/2 connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum H2ConnectError {
    #[error("no HTTP/2 connection to the intake within upstream.connect_timeout")]
    Waited,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the intake did not pick h2 by ALPN and upstream.protocol = \"h2\"; set it to \"auto\" or \"http1\"")]
    NoH2 { addr: SocketAddr },
}

impl H2ConnectError {
    pub fn cause(&self) -> Cause {
        match self {
            H2ConnectError::Waited => Cause::ConnectTimeout,
            H2ConnectError::Connect(e) => e.cause(),
            H2ConnectError::NoH2 { .. } => Cause::BadAnswer,
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            H2ConnectError::Waited => None,
            H2ConnectError::Connect(e) => e.addr(),
            H2ConnectError::NoH2 { addr } => Some(*addr),
        }
    }
}

/// Where a request to a host goes.
pub enum Pick {
    H2(Rc<H2Conn>),
    /// The host picked HTTP/1.1 by ALPN (`auto`): its requests take that
    /// path for now (the session went to the HTTP/1.1 pool).
    Http1,
}

/// A worker's HTTP/2 connections, per intake host.
pub struct H2Hosts {
    conns: Vec<Vec<Rc<H2Conn>>>,
    /// Connections being opened (connect and handshake under way), which
    /// count against `upstream.h2_max_connections` too.
    opening: Vec<usize>,
    /// Notified when an opening ends, for exchanges that wait for it.
    opened: Rc<Signal>,
    /// `auto`: the host picked HTTP/1.1; its requests take that path until then.
    http1_until: Vec<Option<Instant>>,
    /// Exchanges waiting for a stream while every connection is at its limit.
    queued: Vec<usize>,
    pub counters: Vec<Rc<H2Counters>>,
    /// Set when a connection changes what the worker's stats show while
    /// no request runs (a PING sent, a connection ended).
    stats_changed: Rc<Mark>,
}

impl H2Hosts {
    pub fn new(upstreams: usize, stats_changed: Rc<Mark>) -> Self {
        H2Hosts {
            conns: vec![Vec::new(); upstreams],
            opening: vec![0; upstreams],
            opened: Rc::default(),
            http1_until: vec![None; upstreams],
            queued: vec![0; upstreams],
            counters: (0..upstreams).map(|_| Rc::default()).collect(),
            stats_changed,
        }
    }

    /// Whether host `id` picked HTTP/1.1 by ALPN and its requests take that
    /// path for now.
    pub fn http1_fallback(&self, id: UpstreamId) -> bool {
        self.http1_until[id].is_some_and(|t| Instant::now() < t)
    }

    /// Whether a request body of `len` bytes to host `id` would wait for
    /// the intake's flow control over HTTP/2: it is longer than what a new
    /// stream on each of the host's live connections may send before a
    /// WINDOW_UPDATE (the intake's initial stream window, within the
    /// connection's). False while the host has no connection whose
    /// windows are known (the intake's SETTINGS come before its ACK of
    /// ours).
    pub fn window_short(&self, id: UpstreamId, len: u64) -> bool {
        let room = self.conns[id]
            .iter()
            .filter(|c| !c.is_dead() && c.can_open())
            .filter_map(|c| {
                let i = c.inner.borrow();
                i.conn.settings_acked().then(|| i.conn.new_stream_room())
            })
            .max();
        room.is_some_and(|room| len > room)
    }

    /// Open HTTP/2 connections to host `id`.
    pub fn open_count(&self, id: UpstreamId) -> usize {
        self.conns[id].iter().filter(|c| !c.is_dead()).count()
    }

    /// Counts an exchange that waits for a stream of host `upstream`, unless
    /// `max` already wait (`None`: refuse it).
    pub fn enqueue(hosts: &RefCell<H2Hosts>, upstream: UpstreamId, max: usize) -> Option<Queued<'_>> {
        let mut h = hosts.borrow_mut();
        if h.queued[upstream] >= max {
            return None;
        }
        h.queued[upstream] += 1;
        Some(Queued { hosts, upstream })
    }

    /// A live connection to `upstream` with room for a stream, or a new one.
    pub async fn connection<'a, B: Backend>(
        hosts: &'a RefCell<H2Hosts>,
        up: &'a Connector<B>,
        stats: &RefCell<WorkerStats>,
        offset: u16,
        upstream: UpstreamId,
    ) -> Result<Pick, H2ConnectError> {
        if hosts.borrow().http1_fallback(upstream) {
            return Ok(Pick::Http1);
        }
        // Read the clock only if the exchange has to wait.
        let mut deadline = None;
        loop {
            let opened = hosts.borrow().opened.clone();
            let wait = opened.notified();
            if let Some(pick) = hosts.borrow_mut().pick(up, upstream) {
                match pick {
                    Some(conn) => return Ok(Pick::H2(conn)),
                    None => break,
                }
            }
            // Another exchange is opening the connection this one will use.
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + up.config.connect_timeout);
            if crate::rt::timeout(deadline.saturating_duration_since(Instant::now()), wait).await.is_err() {
                return Err(H2ConnectError::Waited);
            }
        }
        let _opening = Opening { hosts, upstream };
        Self::open(hosts, up, stats, offset, upstream).await
    }

    /// `Some(Some(conn))`: use it; `Some(None)`: open one (counted opening);
    /// `None`: wait for a connection being opened.
    fn pick<B: Backend>(&mut self, up: &Connector<B>, upstream: UpstreamId) -> Option<Option<Rc<H2Conn>>> {
        let resolved = up.directory.get(upstream);
        let opening = self.opening[upstream];
        let conns = &mut self.conns[upstream];
        conns.retain(|c| !c.is_dead());
        // Connections to an address the host no longer has, or that is
        // marked down, take no new stream (as pooled HTTP/1.1 sessions).
        conns.retain(|c| {
            let keep = resolved.endpoints.iter().any(|e| e.addr == c.addr && e.is_up());
            if !keep {
                c.inner.borrow_mut().retired = true;
                c.to_driver.notify();
            }
            keep
        });
        if let Some(c) = conns.iter().find(|c| c.can_open()) {
            c.probe_if_stale();
            return Some(Some(c.clone()));
        }
        // A connection the intake is closing (GOAWAY) takes no stream and
        // does not count against the limit.
        conns.retain(|c| !c.inner.borrow().conn.going_away());
        if conns.len() + opening < up.config.h2_max_connections {
            self.opening[upstream] += 1;
            return Some(None);
        }
        if !conns.is_empty() && opening == 0 {
            // All at their limit: the least busy one (the stream waits there).
            return Some(conns.iter().min_by_key(|c| c.inner.borrow().conn.active()).cloned());
        }
        None
    }

    /// Opens a session for a new HTTP/2 connection and starts its task.
    async fn open<B: Backend>(
        hosts: &RefCell<H2Hosts>,
        up: &Connector<B>,
        stats: &RefCell<WorkerStats>,
        offset: u16,
        upstream: UpstreamId,
    ) -> Result<Pick, H2ConnectError> {
        let (lease, _) = up.acquire(stats, offset, upstream, false).await?;
        if !lease.session.is_h2() {
            if up.config.protocol == UpstreamProtocol::H2 {
                return Err(H2ConnectError::NoH2 { addr: lease.addr });
            }
            tracing::info!(
                upstream = up.host(upstream),
                "the intake picked HTTP/1.1 by ALPN; its requests go over HTTP/1.1"
            );
            hosts.borrow_mut().http1_until[upstream] = Some(Instant::now() + HTTP1_RECHECK);
            lease.give_back(Instant::now());
            return Ok(Pick::Http1);
        }
        Ok(Pick::H2(Self::start(hosts, up, upstream, lease.detach())))
    }

    /// A new session on which the intake picked h2 by ALPN while the host
    /// was served over HTTP/1.1 (`auto`): the host speaks HTTP/2 again, and
    /// the session becomes one of its connections.
    pub fn adopt<B: Backend>(
        hosts: &RefCell<H2Hosts>,
        up: &Connector<B>,
        upstream: UpstreamId,
        session: PooledSession<Hop<B::Stream>>,
    ) {
        hosts.borrow_mut().http1_until[upstream] = None;
        tracing::info!(upstream = up.host(upstream), "the intake picked h2 by ALPN again; its requests go over HTTP/2");
        Self::start(hosts, up, upstream, session);
    }

    /// Makes `session` a connection of host `upstream` and starts its task.
    fn start<B: Backend>(
        hosts: &RefCell<H2Hosts>,
        up: &Connector<B>,
        upstream: UpstreamId,
        session: PooledSession<Hop<B::Stream>>,
    ) -> Rc<H2Conn> {
        let cfg = &up.config;
        let local = LocalSettings {
            stream_window: cfg.h2_stream_window,
            conn_window: cfg.h2_connection_window,
            ..LocalSettings::default()
        };
        let (counters, stats) = {
            let h = hosts.borrow();
            (h.counters[upstream].clone(), h.stats_changed.clone())
        };
        let report = (up.host(upstream), up.log.clone());
        let slots = session.session.record_slots();
        let addr = session.addr;
        let shared: Shared<Hop<B::Stream>> = Rc::new(RefCell::new(Some(session)));
        let writer = {
            let shared = shared.clone();
            Box::new(move |c: &H2Conn| drive::write_now(c, &shared))
        };
        let conn = Rc::new(H2Conn::new(
            Conn::laid_out(local, slots),
            addr,
            counters,
            stats,
            cfg.upstream_idle_timeout / 2,
            report,
            writer,
        ));
        tracing::debug!(upstream = up.host(upstream), addr = %addr, "HTTP/2 connection opened");
        hosts.borrow_mut().conns[upstream].push(conn.clone());
        let timeouts =
            Timeouts { write: cfg.response_timeout, idle: cfg.upstream_idle_timeout, ping: cfg.connect_timeout };
        crate::rt::spawn(drive(conn.clone(), shared, timeouts));
        conn
    }
}

/// An exchange waiting for a stream; it stops counting however the wait ends.
pub struct Queued<'a> {
    hosts: &'a RefCell<H2Hosts>,
    upstream: UpstreamId,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.hosts.borrow_mut().queued[self.upstream] -= 1;
    }
}

/// One connection being opened; however the opening ends (done, failed,
/// or dropped with its Agent connection), it stops counting.
struct Opening<'a> {
    hosts: &'a RefCell<H2Hosts>,
    upstream: UpstreamId,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut hosts = self.hosts.borrow_mut();
        hosts.opening[self.upstream] -= 1;
        let opened = hosts.opened.clone();
        drop(hosts);
        opened.notify();
    }
}
