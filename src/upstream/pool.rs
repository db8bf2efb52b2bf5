//! Per-worker pool of idle TLS sessions, one LIFO stack per upstream host.
//!
//! Owned by one worker (inside a `RefCell`), never shared between threads.
//! `take` hands out the most recently used session that is still fresh and
//! passes the liveness check; `give_back` keeps at most `max_idle` per host.
//! The pool never opens sessions itself: `upstream::connect` does, on a miss, and
//! hands each session it uses to a [`Lease`].
//!
//! The pool also owns the accounting: how many sessions per host are open
//! (idle here, or lent out) and how many are idle. A [`Lease`] gives its
//! session back only when asked to ([`Lease::give_back`], after a complete
//! exchange); dropped, it closes the session and counts it closed.

use std::cell::RefCell;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::Endpoint;
use super::tls::TlsSession;
use crate::io::Stream;
use crate::route::UpstreamId;

/// A session checked out of (or headed for) the pool.
pub struct PooledSession<S: Stream> {
    pub session: TlsSession<S>,
    pub addr: SocketAddr,
    /// Requests this session carried before the current one.
    pub uses: u64,
    /// The address's health: a session to an address marked down is not reused.
    pub endpoint: Option<Arc<Endpoint>>,
}

struct Idle<S: Stream> {
    session: PooledSession<S>,
    since: Instant,
}

pub struct Pool<S: Stream> {
    idle: Vec<Vec<Idle<S>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Per host: sessions open, idle here or lent out to a [`Lease`].
    open: Vec<i64>,
}

impl<S: Stream> Pool<S> {
    pub fn new(upstreams: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        Pool { idle: (0..upstreams).map(|_| Vec::new()).collect(), max_idle, idle_timeout, open: vec![0; upstreams] }
    }

    /// The freshest live idle session for `id`, if any. Stale or dead
    /// sessions met on the way are dropped (counted in the second value).
    pub fn take(&mut self, id: UpstreamId, now: Instant) -> (Option<PooledSession<S>>, usize) {
        let dropped = self.drop_unusable(id, now);
        (self.idle[id].pop().map(|i| i.session), dropped)
    }

    /// Whether [`Pool::take`] would give a session for `id` now (stale or
    /// dead sessions met on the way are dropped, as there).
    pub fn has_live(&mut self, id: UpstreamId, now: Instant) -> bool {
        self.drop_unusable(id, now);
        !self.idle[id].is_empty()
    }

    /// Drops unusable sessions off the top of `id`'s stack until a usable
    /// one (left on top) or none; returns how many went.
    fn drop_unusable(&mut self, id: UpstreamId, now: Instant) -> usize {
        let stack = &mut self.idle[id];
        let mut dropped = 0;
        while let Some(idle) = stack.last_mut() {
            let healthy = match &idle.session.endpoint {
                Some(e) => e.is_usable(),
                None => true,
            };
            if healthy && now.duration_since(idle.since) < self.idle_timeout && idle.session.session.is_reusable_now() {
                break;
            }
            stack.pop();
            dropped += 1;
        }
        self.open[id] -= dropped as i64;
        dropped
    }

    /// Counts a session the relay just opened for `id`.
    pub fn opened(&mut self, id: UpstreamId) {
        self.open[id] += 1;
    }

    /// Sessions open for `id`: idle here or lent out.
    pub fn open_count(&self, id: UpstreamId) -> i64 {
        self.open[id]
    }

    /// Returns a session after a complete exchange. `false` if it was
    /// dropped because the host already has `max_idle` idle sessions.
    pub fn give_back(&mut self, id: UpstreamId, mut session: PooledSession<S>, now: Instant) -> bool {
        let stack = &mut self.idle[id];
        if stack.len() >= self.max_idle {
            self.open[id] -= 1;
            return false;
        }
        session.uses += 1;
        session.session.arm_idle();
        stack.push(Idle { session, since: now });
        true
    }

    /// Drops sessions idle for longer than the idle timeout; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for (stack, open) in self.idle.iter_mut().zip(&mut self.open) {
            // Oldest first: the stack is ordered by `since`.
            let keep_from =
                stack.iter().position(|i| now.duration_since(i.since) < self.idle_timeout).unwrap_or(stack.len());
            n += keep_from;
            *open -= keep_from as i64;
            stack.drain(..keep_from);
        }
        n
    }

    /// When the oldest idle session passes the idle timeout (the next
    /// [`Pool::sweep`] with something to do), if any session is idle.
    pub fn next_expiry(&self) -> Option<Instant> {
        // Each stack is ordered by `since`: its first is its oldest.
        self.idle.iter().filter_map(|s| s.first()).map(|i| i.since + self.idle_timeout).min()
    }

    pub fn idle_count(&self, id: UpstreamId) -> usize {
        self.idle[id].len()
    }

    /// Drops every idle session (shutdown).
    pub fn clear(&mut self) {
        for (s, open) in self.idle.iter_mut().zip(&mut self.open) {
            *open -= s.len() as i64;
            s.clear();
        }
    }
}

/// A session lent out of (or new to) the pool for one exchange. Dropped,
/// it closes the session and counts it closed; [`Lease::give_back`] puts it
/// back, idle, for the next request.
pub struct Lease<'p, S: Stream> {
    pool: &'p RefCell<Pool<S>>,
    id: UpstreamId,
    session: Option<PooledSession<S>>,
}

impl<'p, S: Stream> Lease<'p, S> {
    /// A session taken from `pool` (already counted open).
    pub fn taken(pool: &'p RefCell<Pool<S>>, id: UpstreamId, session: PooledSession<S>) -> Self {
        Lease { pool, id, session: Some(session) }
    }

    /// A session the relay just opened: counted open now.
    pub fn opened(pool: &'p RefCell<Pool<S>>, id: UpstreamId, session: PooledSession<S>) -> Self {
        pool.borrow_mut().opened(id);
        Lease { pool, id, session: Some(session) }
    }

    /// After a complete exchange: back to the pool, idle. `false` if the
    /// host already has `max_idle` idle sessions (this one is closed).
    pub fn give_back(mut self, now: Instant) -> bool {
        let session = self.session.take().expect("a lease holds its session until given back");
        self.pool.borrow_mut().give_back(self.id, session, now)
    }
}

impl<S: Stream> Lease<'_, S> {
    /// Takes the session out of the pool's keeping for good (an HTTP/2
    /// connection, which its own task owns and closes): no longer counted
    /// open here.
    pub fn detach(mut self) -> PooledSession<S> {
        self.pool.borrow_mut().open[self.id] -= 1;
        self.session.take().expect("a lease holds its session until given back")
    }
}

impl<S: Stream> std::ops::Deref for Lease<'_, S> {
    type Target = PooledSession<S>;
    fn deref(&self) -> &PooledSession<S> {
        self.session.as_ref().expect("a lease holds its session until given back")
    }
}

impl<S: Stream> std::ops::DerefMut for Lease<'_, S> {
    fn deref_mut(&mut self) -> &mut PooledSession<S> {
        self.session.as_mut().expect("a lease holds its session until given back")
    }
}

impl<S: Stream> Drop for Lease<'_, S> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.borrow_mut().open[self.id] -= 1;
            drop(session);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pool's accounting and liveness checks over the in-memory
    //! backend: real TLS sessions (the FIPS provider on both sides), no
    //! sockets.
    use super::*;
    use crate::io::mem::{Mem, MemStream};
    use crate::io::Backend;
    use crate::testing::{configs, intake};
    use crate::upstream::tls::TlsSession;
    use std::cell::Cell;
    use std::rc::Rc;

    const NAME: &str = "metrics.agent.ddog-gov.com";

    /// Answers every request (any bytes) with `pong`.
    fn pong(_: &[u8]) -> Option<Vec<u8>> {
        Some(b"pong".to_vec())
    }

    async fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> PooledSession<MemStream> {
        let io = Mem::connect(addr).await.unwrap();
        let session = TlsSession::connect(io, config, NAME).await.unwrap();
        PooledSession { session, addr, uses: 0, endpoint: None }
    }

    async fn ping(s: &mut PooledSession<MemStream>) {
        s.session.write_plain(b"ping").await.unwrap();
        let mut buf = Vec::with_capacity(64);
        while buf.len() < 4 {
            assert!(s.session.read_plain(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(&buf[..], b"pong");
    }

    #[test]
    fn a_session_given_back_is_taken_again_and_a_closed_one_is_dropped() {
        let (client, server, _dir) = configs();
        Mem::block_on(async move {
            let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
            let listener = Mem::listen(addr);
            // The first connection serves two exchanges and closes.
            crate::rt::spawn(intake(listener, server, 2, Rc::new(Cell::new(0)), Rc::new(pong)));
            let pool = RefCell::new(Pool::new(1, 2, Duration::from_secs(30)));
            let now = Instant::now();
            // Opened, used, given back: one open, one idle.
            let mut lease = Lease::opened(&pool, 0, open(addr, client.clone()).await);
            ping(&mut lease).await;
            assert!(lease.give_back(now));
            assert_eq!((pool.borrow().open_count(0), pool.borrow().idle_count(0)), (1, 1));
            // Taken again: the same session (its use counted), still alive.
            let (taken, dropped) = pool.borrow_mut().take(0, now);
            let mut lease = Lease::taken(&pool, 0, taken.expect("the idle session is reusable"));
            assert_eq!((dropped, lease.uses), (0, 1));
            ping(&mut lease).await;
            assert!(lease.give_back(now));
            // The intake closes it while idle (close_notify, FIN): the
            // liveness check drops it and counts it closed.
            crate::rt::sleep(Duration::from_millis(20)).await;
            let (taken, dropped) = pool.borrow_mut().take(0, now);
            assert!(taken.is_none());
            assert_eq!((dropped, pool.borrow().open_count(0)), (1, 0));
            // A lease dropped after a failed exchange closes its session.
            let lease = Lease::opened(&pool, 0, open(addr, client.clone()).await);
            assert_eq!(pool.borrow().open_count(0), 1);
            drop(lease);
            assert_eq!((pool.borrow().open_count(0), pool.borrow().idle_count(0)), (0, 0));
            // Beyond max_idle (2), a session given back is closed.
            let mut leases = Vec::new();
            for _ in 0..3 {
                leases.push(Lease::opened(&pool, 0, open(addr, client.clone()).await));
            }
            let kept: Vec<bool> = leases.into_iter().map(|l| l.give_back(now)).collect();
            assert_eq!(kept, [true, true, false]);
            assert_eq!((pool.borrow().open_count(0), pool.borrow().idle_count(0)), (2, 2));
            // Past the idle timeout, sessions are swept.
            assert_eq!(pool.borrow_mut().sweep(now + Duration::from_secs(31)), 2);
            assert_eq!(pool.borrow().open_count(0), 0);
        })
        .unwrap();
    }
}
