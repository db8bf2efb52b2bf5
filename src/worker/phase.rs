//! The worker's lifecycle phase: running, or draining (shutdown or a
//! restart in place). The control thread publishes it through a `watch`;
//! each worker keeps a copy ([`LocalPhase`]) that its connections read and
//! wait on every request without a lock or an atomic.

use std::cell::Cell;
use std::time::Instant;

use crate::rt::Signal;

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
/// for the drain.
pub struct LocalPhase {
    now: Cell<Phase>,
    changed: Signal,
}

impl LocalPhase {
    pub fn new(p: Phase) -> Self {
        LocalPhase { now: Cell::new(p), changed: Signal::default() }
    }

    pub fn get(&self) -> Phase {
        self.now.get()
    }

    /// The worker's mirror task saw the control thread change the phase.
    pub fn set(&self, p: Phase) {
        self.now.set(p);
        self.changed.notify();
    }

    /// Resolves once the phase is no longer `Running`.
    pub async fn draining(&self) {
        self.changed.wait_for(|| (self.get() != Phase::Running).then_some(())).await
    }
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
    fn the_local_phase_wakes_its_waiters_once_draining() {
        let phase = LocalPhase::new(Phase::Running);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(phase.draining());
        let mut b = Box::pin(phase.draining());
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Pending);
        phase.set(Phase::Running);
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "a and b woken to look");
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending, "still running");
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Pending, "still running");
        phase.set(Phase::Draining { deadline: Instant::now(), handover: false });
        assert_eq!(count.0.load(Ordering::Relaxed), 4, "a and b woken at each change");
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(Box::pin(phase.draining()).as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
