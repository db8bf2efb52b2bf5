//! Precise open-loop pacing: a connection waits for its intended send time on
//! its own `timerfd` armed with an absolute CLOCK_MONOTONIC deadline (the
//! clock `Instant` reads on Linux), registered in the runtime's reactor. The
//! tokio timer rounds every sleep up to its 1 ms wheel, which used to make
//! every request leave up to a millisecond late and put that lag into every
//! open-loop latency figure; a timerfd wakes within microseconds (with the
//! thread's timer slack set to 1 ns, see [`tighten_timer_slack`]). Also
//! records the client's own send lag, so a report can say when the client,
//! not the server, was late. Owns timing only; it never touches a socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::unix::AsyncFd;

/// Sets this thread's timer slack to 1 ns (the default is 50 µs), so that
/// timer wake-ups are not batched late.
pub fn tighten_timer_slack() {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn now_timespec() -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

/// Sleeps until absolute instants, precisely.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
    /// An `Instant` and the CLOCK_MONOTONIC time read right after it.
    base: (Instant, libc::timespec),
}

impl Pacer {
    /// A pacer on a new timerfd; must be called inside a tokio runtime.
    pub fn new() -> io::Result<Pacer> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let base = (Instant::now(), now_timespec());
        // SAFETY: the OwnedFd stays open, and is the same descriptor, for as
        // long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Pacer { fd, base })
    }

    fn deadline(&self, at: Instant) -> libc::timespec {
        let ahead = at.saturating_duration_since(self.base.0);
        let base = Duration::new(self.base.1.tv_sec as u64, self.base.1.tv_nsec as u32);
        let t = base + ahead;
        libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as libc::c_long }
    }

    /// Returns at `at` or a few µs after; at once when `at` has passed. With
    /// `spin` > 0, sleeps until `at - spin`, then yields to the runtime in a
    /// loop until `at`: no wake-up from an idle CPU (tens of µs on a VM), at
    /// the price of a busy CPU for `spin` before every send.
    pub async fn sleep_until(&self, at: Instant, spin: Duration) -> io::Result<()> {
        if at <= Instant::now() {
            return Ok(());
        }
        let wake = at.checked_sub(spin).unwrap_or(at);
        if wake > Instant::now() {
            self.sleep_exactly(wake).await?;
        }
        while Instant::now() < at {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn sleep_exactly(&self, at: Instant) -> io::Result<()> {
        let spec =
            libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: self.deadline(at) };
        // SAFETY: valid fd and pointers; absolute time on the fd's clock.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

/// The client's own send lag: actual send minus the time the request could
/// have left (its intended time, or the previous answer when that came
/// later: that wait is the server's, and the latency already counts it).
/// Nanoseconds, 3 significant figures, up to 1 hour.
#[derive(Clone, Debug)]
pub struct SendLag {
    histogram: Histogram<u64>,
}

impl Default for SendLag {
    fn default() -> Self {
        SendLag {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("1 ns .. 1 h at 3 significant figures is a valid histogram"),
        }
    }
}

impl SendLag {
    pub fn record(&mut self, lag: Duration) {
        let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX).clamp(1, 3_600_000_000_000);
        self.histogram.record(ns).expect("value is clamped into the histogram's range");
    }

    pub fn merge(&mut self, other: &SendLag) {
        self.histogram.add(&other.histogram).expect("histograms with equal bounds always add");
    }

    pub fn summary(&self) -> Option<SendLagSummary> {
        let h = &self.histogram;
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        (!h.is_empty()).then(|| SendLagSummary {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
        })
    }
}

/// [`SendLag`] percentiles in µs (0.1 µs steps).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SendLagSummary {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl SendLagSummary {
    /// Lag above which the open-loop latency figures carry the client's own
    /// delay more than the comparison tolerance allows: 50 µs, or a fifth of
    /// the latency p99 when that is larger.
    pub fn limit_us(latency_p99_us: u64) -> f64 {
        (latency_p99_us as f64 * 0.2).max(50.0)
    }

    /// True when the lag makes the latency figures unreliable.
    pub fn unreliable(&self, latency_p99_us: u64) -> bool {
        self.p99 > Self::limit_us(latency_p99_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_within_a_fraction_of_a_millisecond() {
        tighten_timer_slack();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let pacer = Pacer::new().unwrap();
            let mut lags = Vec::new();
            for i in 0..50u64 {
                let at = Instant::now() + Duration::from_micros(300 + 37 * (i % 7));
                pacer.sleep_until(at, Duration::ZERO).await.unwrap();
                let now = Instant::now();
                assert!(now >= at, "woke early");
                lags.push(now - at);
            }
            lags.sort();
            // A timerfd wakes within tens of µs here (the tokio timer rounded
            // every sleep up to its 1 ms wheel). The bound is loose on
            // purpose, for a loaded 2-CPU machine: it catches a pacer that
            // does not wake on time at all; the bench measures the real lag.
            assert!(lags[25] < Duration::from_millis(2), "median lag {:?}", lags[25]);
            // A deadline already past returns at once.
            pacer.sleep_until(Instant::now() - Duration::from_millis(1), Duration::ZERO).await.unwrap();
            // Spinning the last 200 µs ends on time too.
            let at = Instant::now() + Duration::from_micros(700);
            pacer.sleep_until(at, Duration::from_micros(200)).await.unwrap();
            assert!(Instant::now() >= at);
        });
    }

    #[test]
    fn lag_summary_and_limit() {
        let mut lag = SendLag::default();
        for us in 1..=100u64 {
            lag.record(Duration::from_micros(us));
        }
        let s = lag.summary().unwrap();
        assert_eq!(s.count, 100);
        assert!((s.p50 - 50.0).abs() < 0.1 && (s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!(s.unreliable(100) && !s.unreliable(1000));
        assert!(SendLag::default().summary().is_none());
    }
}
