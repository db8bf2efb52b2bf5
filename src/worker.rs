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

/// The phase as this worker's thread last saw it, and the tasks waiting
/// for the drain: a copy of the control thread's `watch` that connections
/// read and wait on every request without a lock or an atomic.
pub struct LocalPhase {
    now: Cell<Phase>,
    /// Wakers of the waiting tasks, by slot; freed slots are reused.
    waiters: RefCell<Vec<Option<std::task::Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalPhase {
    fn new(p: Phase) -> Self {
        LocalPhase { now: Cell::new(p), waiters: RefCell::new(Vec::new()), free: RefCell::new(Vec::new()) }
    }

    pub fn get(&self) -> Phase {
        self.now.get()
    }

    /// The worker's mirror task saw the control thread change the phase.
    fn set(&self, p: Phase) {
        self.now.set(p);
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves once the phase is no longer `Running`.
    pub fn draining(&self) -> DrainWait<'_> {
        DrainWait { phase: self, slot: None }
    }
}

/// [`LocalPhase::draining`]'s future; its slot is freed when it is dropped.
pub struct DrainWait<'a> {
    phase: &'a LocalPhase,
    slot: Option<usize>,
}

impl std::future::Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.phase.get() != Phase::Running {
            return std::task::Poll::Ready(());
        }
        let mut waiters = self.phase.waiters.borrow_mut();
        let slot = match self.slot {
            Some(k) => k,
            None => match self.phase.free.borrow_mut().pop() {
                Some(k) => k,
                None => {
                    waiters.push(None);
                    waiters.len() - 1
                }
            },
        };
        waiters[slot] = Some(cx.waker().clone());
        drop(waiters);
        self.slot = Some(slot);
        std::task::Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.slot {
            self.phase.waiters.borrow_mut()[k] = None;
            self.phase.free.borrow_mut().push(k);
        }
    }
}

/// Keeps the worker's [`LocalPhase`] equal to the control thread's phase.
async fn mirror_phase<B: Backend>(ctx: Rc<WorkerCtx<B>>) {
    let mut rx = ctx.phase.clone();
    loop {
        let p = *rx.borrow_and_update();
        ctx.local_phase.set(p);
        if rx.changed().await.is_err() {
            return;
        }
    }
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
    /// `phase` as this thread last saw it (what connections look at).
    pub local_phase: LocalPhase,
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
        let current = *phase.borrow();
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
            local_phase: LocalPhase::new(current),
            phase,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            next_addr: Cell::new(0),
            handed_over,
        }
    }

    pub fn draining(&self) -> Option<Instant> {
        match self.local_phase.get() {
            Phase::Running => None,
            Phase::Draining { deadline, .. } => Some(deadline),
        }
    }

    /// Resolves once the drain deadline has passed (never while running).
    pub(crate) async fn drain_deadline(&self) {
        self.local_phase.draining().await;
        if let Phase::Draining { deadline, .. } = self.local_phase.get() {
            crate::rt::sleep_until(deadline).await;
        }
    }

    /// Whether this drain is a restart in place (connections handed over).
    pub fn handing_over(&self) -> bool {
        matches!(self.local_phase.get(), Phase::Draining { handover: true, .. })
    }

    /// Resolves once draining starts.
    pub(crate) async fn drain_started(&self) {
        self.local_phase.draining().await;
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
        crate::rt::spawn(mirror_phase(ctx.clone()));
        crate::rt::spawn(housekeeping(ctx.clone()));
        let _ = ready.send(Ok(()));
        drop(ready);

        ctx.local_phase.draining().await;
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
    ctx.local_phase.draining().await;
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
            u.h2_http1_fallback = i64::from(h2.http1_fallback(i));
        }
    }
    ctx.hub.publish(ctx.id, &ctx.stats.borrow());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_local_phase_wakes_its_waiters_once_draining_and_reuses_slots() {
        let phase = LocalPhase::new(Phase::Running);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(phase.draining());
        let mut b = Box::pin(phase.draining());
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Pending);
        // Polled again, a keeps its slot.
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(phase.waiters.borrow().len(), 2);
        drop(b);
        let mut c = Box::pin(phase.draining());
        assert_eq!(c.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(phase.waiters.borrow().len(), 2, "b's slot went to c");
        phase.set(Phase::Draining { deadline: Instant::now(), handover: false });
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "a and c woken");
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(c.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(Box::pin(phase.draining()).as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
