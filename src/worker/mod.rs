//! A worker: one thread (pinned to one CPU with `workers.pin`, the default), running its own event loop
//! (io_uring or epoll) with its own listeners, pool, buffers and stats.
//! Its state ([`WorkerCtx`], in `ctx`) is what the connections it serves
//! ([`crate::relay`]) borrow; `phase` is the drain it waits for.
//!
//! It accepts until the control thread says drain, then waits for its
//! connections to finish (bounded by the drain deadline) and returns. It
//! never touches another worker's state.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::io::{Backend, Listener};
use crate::listener::WorkerListeners;
use crate::metrics::PUBLISH_INTERVAL;
use crate::relay;

pub mod ctx;
pub mod phase;

pub use ctx::WorkerCtx;
pub use phase::{LocalPhase, Phase};

/// After the drain deadline, answers already under way get this long.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error such as EMFILE, so it is not a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept error line per listener this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

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
        let summaries = ctx.log.clone();
        crate::rt::spawn(async move { summaries.run().await });
        let _ = ready.send(Ok(()));
        drop(ready);

        ctx.local_phase.draining().await;
        let deadline = ctx.draining().unwrap_or_else(Instant::now) + DRAIN_GRACE;
        let open = || ctx.connections.get() + ctx.status_connections.get();
        while open() > 0 && Instant::now() < deadline {
            crate::rt::sleep(Duration::from_millis(10)).await;
        }
        if open() > 0 {
            tracing::warn!(
                worker = ctx.id,
                connections = open(),
                "drain deadline passed; closing remaining connections"
            );
        }
        ctx.upstream.pool.borrow_mut().clear();
        publish(&ctx);
        // What was counted and not yet summarised is not lost at the exit.
        ctx.log.flush(true);
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

/// Publishes stats and sweeps idle sessions: at most every
/// [`PUBLISH_INTERVAL`] while the worker is busy, and not at all while
/// nothing happens (the thread sleeps), but for an idle pooled session's
/// expiry.
async fn housekeeping<B: Backend>(ctx: Rc<WorkerCtx<B>>) {
    loop {
        let expiry = ctx.upstream.pool.borrow().next_expiry();
        match expiry {
            Some(at) => {
                tokio::select! {
                    _ = ctx.touched() => {}
                    _ = crate::rt::sleep_until(at) => {}
                }
            }
            None => ctx.touched().await,
        }
        // What else happens in the next interval goes in the same publish.
        crate::rt::sleep(PUBLISH_INTERVAL).await;
        ctx.untouch();
        ctx.upstream.pool.borrow_mut().sweep(Instant::now());
        publish(&ctx);
    }
}

/// Publishes the worker's counters, with the pool's session counts (the
/// pool keeps them: open, lent or idle, and idle).
fn publish<B: Backend>(ctx: &WorkerCtx<B>) {
    {
        let pool = ctx.upstream.pool.borrow();
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
            u.h2_window_detours = c.window_detours.get();
            u.h2_http1_fallback = i64::from(h2.http1_fallback(i));
        }
    }
    ctx.hub.publish(ctx.id, &ctx.stats.borrow());
}
