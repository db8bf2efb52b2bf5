//! A worker: one thread, pinned to one CPU, running its own event loop
//! (io_uring or epoll) with its own listeners, pool, buffers and stats.
//! Its state ([`WorkerCtx`]) lives here; the connections it serves
//! ([`crate::relay`]) borrow it.
//!
//! It accepts until the control thread says drain, then waits for its
//! connections to finish (bounded by the drain deadline) and returns. It
//! never touches another worker's state.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::sync::watch;

use crate::buffers::BufferPool;
use crate::config::Config;
use crate::io::{Backend, Listener};
use crate::listener::WorkerListeners;
use crate::metrics::{StatsHub, WorkerStats, PUBLISH_INTERVAL};
use crate::relay::{self, MAX_FREE_BUFFERS};
use crate::route::{RouteTable, UpstreamId};
use crate::status::StatusInfo;
use crate::upstream::pool::Pool;
use crate::upstream::proxy::Hop;
use crate::upstream::Directory;

/// After the drain deadline, answers already under way get this long.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error such as EMFILE, so it is not a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept error line per listener this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Lifecycle phase published by the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting, finish what was read, answer 503 at `deadline`.
    /// With `handover`, a restart in place: connections idle at a request
    /// boundary are handed to the next process instead of closed, and
    /// answers keep the connection alive.
    Draining {
        deadline: Instant,
        handover: bool,
    },
}

/// Everything a worker's connections share. Lives on one thread.
pub struct WorkerCtx<B: Backend> {
    pub id: usize,
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub directory: Arc<Directory>,
    pub tls: Arc<ClientConfig>,
    pub pool: RefCell<Pool<Hop<B::Stream>>>,
    /// HTTP/2 connections per intake host (`upstream.protocol` h2 or auto).
    pub h2: RefCell<relay::h2::H2Hosts>,
    /// I/O buffers lent to connections while they carry a request.
    pub buffers: RefCell<BufferPool>,
    pub stats: RefCell<WorkerStats>,
    pub hub: Arc<StatsHub>,
    pub info: Arc<StatusInfo>,
    pub phase: watch::Receiver<Phase>,
    /// Requests between a complete head and a complete answer.
    pub in_flight: Cell<usize>,
    pub connections: Cell<usize>,
    /// Round robin over an upstream's addresses.
    pub(crate) next_addr: Cell<usize>,
    /// Idle Agent connections for the next process (restart in place only).
    pub handed_over: Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>,
}

impl<B: Backend> WorkerCtx<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        config: Arc<Config>,
        routes: Arc<RouteTable>,
        directory: Arc<Directory>,
        tls: Arc<ClientConfig>,
        hub: Arc<StatsHub>,
        info: Arc<StatusInfo>,
        phase: watch::Receiver<Phase>,
        handed_over: Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>,
    ) -> Self {
        let n = routes.upstreams.len();
        WorkerCtx {
            id,
            pool: RefCell::new(Pool::new(n, config.max_idle_per_host, config.upstream_idle_timeout)),
            h2: RefCell::new(relay::h2::H2Hosts::new(n)),
            buffers: RefCell::new(BufferPool::new(MAX_FREE_BUFFERS)),
            stats: RefCell::new(WorkerStats::new(n)),
            config,
            routes,
            directory,
            tls,
            hub,
            info,
            phase,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            next_addr: Cell::new(0),
            handed_over,
        }
    }

    pub fn draining(&self) -> Option<Instant> {
        match *self.phase.borrow() {
            Phase::Running => None,
            Phase::Draining { deadline, .. } => Some(deadline),
        }
    }

    /// Resolves once the drain deadline has passed (never while running).
    pub(crate) async fn drain_deadline(&self) {
        let mut rx = self.phase.clone();
        loop {
            if let Phase::Draining { deadline, .. } = *rx.borrow_and_update() {
                crate::rt::sleep_until(deadline).await;
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether this drain is a restart in place (connections handed over).
    pub fn handing_over(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Draining { handover: true, .. })
    }

    /// Resolves once draining starts.
    pub(crate) async fn drain_started(&self) {
        let mut rx = self.phase.clone();
        let _ = rx.wait_for(|p| *p != Phase::Running).await;
    }

    pub(crate) fn upstream_host(&self, id: UpstreamId) -> &str {
        &self.routes.upstreams[id].host
    }

    pub(crate) fn server_name(&self, id: UpstreamId) -> &str {
        self.config.server_name_for(self.upstream_host(id))
    }
}

/// Agent connections a previous process handed over: `(port offset, stream)`.
pub type Adopted = Vec<(u16, std::net::TcpStream)>;

/// Runs the worker's event loop on this thread until the drain completes.
pub fn run<B: Backend>(
    ctx: WorkerCtx<B>,
    listeners: WorkerListeners,
    adopted: Adopted,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let id = ctx.id;
    let res = B::block_on(async move {
        let ctx = Rc::new(ctx);
        for (offset, l) in listeners {
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            match B::listener(l) {
                Ok(l) => {
                    crate::rt::spawn(accept_loop(ctx.clone(), l, offset, port));
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {}: cannot register listener on port {port}: {e}", ctx.id)));
                    return;
                }
            }
        }
        for (offset, stream) in adopted {
            let peer = stream.peer_addr();
            match (B::stream(stream), peer) {
                (Ok(s), Ok(peer)) => {
                    crate::rt::spawn(relay::serve(ctx.clone(), s, offset, peer));
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(worker = ctx.id, error = %e, "cannot take over a handed-over connection; it is closed")
                }
            }
        }
        crate::rt::spawn(housekeeping(ctx.clone()));
        let _ = ready.send(Ok(()));
        drop(ready);

        let mut phase = ctx.phase.clone();
        let _ = phase.wait_for(|p| *p != Phase::Running).await;
        let deadline = ctx.draining().unwrap_or_else(Instant::now) + DRAIN_GRACE;
        while ctx.connections.get() > 0 && Instant::now() < deadline {
            crate::rt::sleep(Duration::from_millis(10)).await;
        }
        if ctx.connections.get() > 0 {
            tracing::warn!(
                worker = ctx.id,
                connections = ctx.connections.get(),
                "drain deadline passed; closing remaining connections"
            );
        }
        ctx.pool.borrow_mut().clear();
        publish(&ctx);
    });
    if let Err(e) = res {
        tracing::error!(worker = id, error = %e, "worker event loop failed to start");
    }
}

async fn accept_loop<B: Backend>(ctx: Rc<WorkerCtx<B>>, listener: B::Listener, offset: u16, port: u16) {
    // One line per ACCEPT_LOG_EVERY at most, with the failures in between
    // counted: descriptors running out (EMFILE) comes and goes under load.
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drain_started(&ctx) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                crate::rt::spawn(relay::serve(ctx.clone(), stream, offset, peer));
            }
            // The client gave up before the accept: nothing to log or wait for.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    tracing::error!(worker = ctx.id, port, error = %e, failures_since_last_line = unlogged, "accept failed; backing off (raise LimitNOFILE if this is EMFILE)");
                    last_log = Some(Instant::now());
                    unlogged = 0;
                } else {
                    unlogged += 1;
                }
                crate::rt::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn drain_started<B: Backend>(ctx: &WorkerCtx<B>) {
    let mut rx = ctx.phase.clone();
    let _ = rx.wait_for(|p| *p != Phase::Running).await;
}

/// Publishes stats and sweeps idle sessions a few times a second.
async fn housekeeping<B: Backend>(ctx: Rc<WorkerCtx<B>>) {
    let mut next = Instant::now();
    loop {
        crate::rt::sleep_until(next).await;
        next = (next + PUBLISH_INTERVAL).max(Instant::now());
        ctx.pool.borrow_mut().sweep(Instant::now());
        publish(&ctx);
    }
}

/// Publishes the worker's counters, with the pool's session counts (the
/// pool keeps them: open, lent or idle, and idle).
fn publish<B: Backend>(ctx: &WorkerCtx<B>) {
    {
        let pool = ctx.pool.borrow();
        let h2 = ctx.h2.borrow();
        let mut st = ctx.stats.borrow_mut();
        for (i, u) in st.upstreams.iter_mut().enumerate() {
            u.sessions_open = pool.open_count(i);
            u.sessions_idle = pool.idle_count(i) as i64;
            u.h2_connections = h2.open_count(i) as i64;
            let c = &h2.counters[i];
            u.h2_writes = c.writes.get();
            u.h2_frames = c.frames.get();
            u.h2_streams = c.streams.get();
            u.h2_replays = c.replays.get();
            u.h2_pings = c.pings.get();
        }
    }
    ctx.hub.publish(ctx.id, &ctx.stats.borrow());
}
