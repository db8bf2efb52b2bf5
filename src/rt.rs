//! The runtime services the relay needs besides I/O (spawning a task,
//! sleeping, timeouts), from whichever loop runs this thread: the
//! io_uring worker loop ([`crate::io::ring`]) or tokio's current-thread
//! runtime (the epoll backend, the control thread).
//!
//! Code that runs on a worker calls these instead of `tokio::time` and
//! `tokio::task`, which need tokio's driver and would panic on a ring.
//! [`Signal`] is the one way tasks of a thread wake each other.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::io::ring;

/// A timeout ran out before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Spawns a task on this thread (a tokio `LocalSet` or the ring's loop).
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    if ring::is_current() {
        ring::spawn(fut);
    } else {
        tokio::task::spawn_local(fut);
    }
}

/// A sleep on whichever loop runs this thread.
pub enum Sleep {
    Tokio(tokio::time::Sleep),
    Ring(ring::Sleep),
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    if ring::is_current() {
        Sleep::Ring(ring::sleep_until(deadline))
    } else {
        Sleep::Tokio(tokio::time::sleep_until(deadline.into()))
    }
}

pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: a structural projection; neither variant is ever moved out.
        unsafe {
            match self.get_unchecked_mut() {
                Sleep::Tokio(s) => Pin::new_unchecked(s).poll(cx),
                Sleep::Ring(s) => Pin::new_unchecked(s).poll(cx),
            }
        }
    }
}

/// Runs `fut` for at most `d`. A plain future, not an `async fn`: an
/// `async fn` would hold `fut` twice (its argument and the future it
/// awaits), and every connection's task is as large as its largest state.
///
/// The clock is read and the timer made only when `fut` is first pending:
/// most writes and many waits finish at their first poll, and then cost
/// neither a clock read nor a timer. The limit counts from that first poll.
pub fn timeout<F: Future>(d: Duration, fut: F) -> Timeout<F> {
    Timeout { fut, limit: d, sleep: None }
}

pub struct Timeout<F> {
    fut: F,
    limit: Duration,
    sleep: Option<Sleep>,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: a structural projection; neither field is ever moved out
        // (`sleep` is written once, while it is `None`, before it is pinned).
        let this = unsafe { self.get_unchecked_mut() };
        if let Poll::Ready(out) = unsafe { Pin::new_unchecked(&mut this.fut) }.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let sleep = this.sleep.get_or_insert_with(|| sleep(this.limit));
        match unsafe { Pin::new_unchecked(sleep) }.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A wake-up between the tasks of one thread: a task waits for the next
/// [`Signal::notify`] or for a condition to hold, and `notify` wakes every
/// task waiting. No lock and no atomic (`tokio::sync::Notify` takes a
/// mutex on every notify and every wait); a waiting task holds one slot,
/// reused once its wait ends, so steady state allocates nothing.
#[derive(Default)]
pub struct Signal {
    /// Notifications so far: a [`Notified`] is ready once this moved past
    /// the count it was made at.
    count: Cell<u64>,
    /// Wakers of the waiting tasks, by slot.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Signal {
    /// Wakes every task waiting on this signal.
    pub fn notify(&self) {
        self.count.set(self.count.get() + 1);
        // One at a time, out of the borrow: a woken waker may run code that
        // waits again (no allocation either way).
        let mut k = 0;
        loop {
            let next = {
                let mut waiters = self.waiters.borrow_mut();
                let Some(slot) = waiters.get_mut(k) else { break };
                slot.take()
            };
            if let Some(w) = next {
                w.wake();
            }
            k += 1;
        }
    }

    /// Ready at the first [`Signal::notify`] after this call (a notify
    /// between this call and the first poll counts).
    pub fn notified(&self) -> Notified<'_> {
        Notified { signal: self, seen: self.count.get(), slot: None }
    }

    /// Ready once `ready` gives a value; it is asked again at every notify.
    pub async fn wait_for<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        let mut slot = self.waiter();
        std::future::poll_fn(|cx| match ready() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// A place among the waiters, for a future that polls by hand (one that
    /// waits on this signal or on something else, whichever applies).
    pub fn waiter(&self) -> Waiter<'_> {
        Waiter { signal: self, at: None }
    }

    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        let k = *slot.get_or_insert_with(|| match self.free.borrow_mut().pop() {
            Some(k) => k,
            None => {
                waiters.push(None);
                waiters.len() - 1
            }
        });
        match &mut waiters[k] {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
    }

    fn release(&self, slot: Option<usize>) {
        if let Some(k) = slot {
            self.waiters.borrow_mut()[k] = None;
            self.free.borrow_mut().push(k);
        }
    }

    /// Slots in use or free (for tests).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// "Something changed" between the tasks of one thread: the first
/// [`Mark::set`] after a [`Mark::clear`] wakes the task waiting for it;
/// further sets cost a flag test.
#[derive(Default)]
pub struct Mark {
    set: Cell<bool>,
    signal: Signal,
}

impl Mark {
    pub fn set(&self) {
        if !self.set.replace(true) {
            self.signal.notify();
        }
    }

    pub fn clear(&self) {
        self.set.set(false);
    }

    /// Resolves once set (at once if it is).
    pub async fn wait(&self) {
        self.signal.wait_for(|| self.set.get().then_some(())).await
    }
}

/// A task's place among a [`Signal`]'s waiters; freed when dropped.
pub struct Waiter<'a> {
    signal: &'a Signal,
    at: Option<usize>,
}

impl Waiter<'_> {
    /// The next notify wakes `waker` (once).
    pub fn register(&mut self, waker: &Waker) {
        self.signal.register(&mut self.at, waker);
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.signal.release(self.at.take());
    }
}

/// [`Signal::notified`]'s future.
pub struct Notified<'a> {
    signal: &'a Signal,
    seen: u64,
    slot: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.count.get() != self.seen {
            return Poll::Ready(());
        }
        let this = &mut *self;
        this.signal.register(&mut this.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        self.signal.release(self.slot.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scenario() -> (bool, bool) {
        let quick = timeout(Duration::from_millis(200), async { 1 }).await == Ok(1);
        let t0 = Instant::now();
        let slow = timeout(Duration::from_millis(20), sleep(Duration::from_secs(5))).await == Err(Elapsed);
        assert!(t0.elapsed() < Duration::from_secs(2));
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(async move {
            sleep(Duration::from_millis(5)).await;
            let _ = tx.send(());
        });
        rx.await.unwrap();
        (quick, slow)
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_signal_wakes_its_waiters_once_and_reuses_their_slots() {
        let signal = Signal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let open = Cell::new(false);
        let mut a = Box::pin(signal.wait_for(|| open.get().then_some(7)));
        let mut b = Box::pin(signal.notified());
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Pending);
        // Polled again, a keeps its slot.
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(signal.slots(), 2);
        drop(b);
        let mut c = Box::pin(signal.notified());
        assert_eq!(c.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(signal.slots(), 2, "b's slot went to c");
        // A notify before the first poll counts.
        let mut d = Box::pin(signal.notified());
        signal.notify();
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "a and c woken");
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending, "its condition does not hold yet");
        assert_eq!(c.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(d.as_mut().poll(&mut cx), Poll::Ready(()));
        open.set(true);
        signal.notify();
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(7));
        drop((a, c, d));
        assert_eq!(signal.free.borrow().len(), signal.slots(), "every slot free again");
    }

    #[test]
    fn timeouts_sleeps_and_spawns_work_on_both_loops() {
        assert_eq!(ring::block_on(scenario()).unwrap(), (true, true));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        assert_eq!(local.block_on(&rt, scenario()), (true, true));
    }
}
