//! The runtime services the relay needs besides I/O (spawning a task,
//! sleeping, timeouts), from whichever loop runs this thread: the
//! io_uring worker loop ([`crate::io::ring`]) or tokio's current-thread
//! runtime (the epoll backend, the control thread).
//!
//! Code that runs on a worker calls these instead of `tokio::time` and
//! `tokio::task`, which need tokio's driver and would panic on a ring.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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

    #[test]
    fn timeouts_sleeps_and_spawns_work_on_both_loops() {
        assert_eq!(ring::block_on(scenario()).unwrap(), (true, true));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        assert_eq!(local.block_on(&rt, scenario()), (true, true));
    }
}
