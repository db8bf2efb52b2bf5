//! Per-worker pool of idle TLS sessions, one LIFO stack per upstream host.
//!
//! Owned by one worker (inside a `RefCell`), never shared between threads.
//! `take` hands out the most recently used session that is still fresh and
//! passes the liveness check; `give_back` keeps at most `max_idle` per host.
//! The pool never opens sessions itself: the relay does, on a miss.

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
}

impl<S: Stream> Pool<S> {
    pub fn new(upstreams: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        Pool { idle: (0..upstreams).map(|_| Vec::new()).collect(), max_idle, idle_timeout }
    }

    /// The freshest live idle session for `id`, if any. Stale or dead
    /// sessions met on the way are dropped (counted in the second value).
    pub fn take(&mut self, id: UpstreamId, now: Instant) -> (Option<PooledSession<S>>, usize) {
        let stack = &mut self.idle[id];
        let mut dropped = 0;
        while let Some(mut idle) = stack.pop() {
            let healthy = match &idle.session.endpoint {
                Some(e) => e.is_usable(),
                None => true,
            };
            if healthy && now.duration_since(idle.since) < self.idle_timeout && idle.session.session.is_reusable_now() {
                return (Some(idle.session), dropped);
            }
            dropped += 1;
        }
        (None, dropped)
    }

    /// Returns a session after a complete exchange. `false` if it was
    /// dropped because the host already has `max_idle` idle sessions.
    pub fn give_back(&mut self, id: UpstreamId, mut session: PooledSession<S>, now: Instant) -> bool {
        let stack = &mut self.idle[id];
        if stack.len() >= self.max_idle {
            return false;
        }
        session.uses += 1;
        stack.push(Idle { session, since: now });
        true
    }

    /// Drops sessions idle for longer than the idle timeout; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for stack in &mut self.idle {
            // Oldest first: the stack is ordered by `since`.
            let keep_from =
                stack.iter().position(|i| now.duration_since(i.since) < self.idle_timeout).unwrap_or(stack.len());
            n += keep_from;
            stack.drain(..keep_from);
        }
        n
    }

    pub fn idle_count(&self, id: UpstreamId) -> usize {
        self.idle[id].len()
    }

    /// Drops every idle session (shutdown).
    pub fn clear(&mut self) {
        for s in &mut self.idle {
            s.clear();
        }
    }
}
