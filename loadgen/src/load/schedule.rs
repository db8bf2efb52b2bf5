//! Open-loop pacing: the intended send time of every request of one
//! connection, so that a run at R req/s spread over N connections sends
//! request k of connection c at `start + c/R + k·N/R`, whatever the server
//! does. Latency is measured from the intended time (coordinated omission
//! corrected, as wrk2 does): a server stall delays the sends behind it, and
//! their waiting time shows up in the tail. Owns arithmetic only.

use std::time::{Duration, Instant};

/// Intended send times of one connection.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    /// Offset of this connection's first request, in ns.
    offset_ns: f64,
    /// Gap between two of its requests, in ns.
    interval_ns: f64,
    next: u64,
}

impl Schedule {
    /// Connection `index` of `connections`, all together at `rate` req/s
    /// (rate > 0), from `start`.
    pub fn new(start: Instant, rate: f64, index: usize, connections: usize) -> Schedule {
        let connections = connections.max(1) as f64;
        Schedule { start, offset_ns: index as f64 * 1e9 / rate, interval_ns: connections * 1e9 / rate, next: 0 }
    }

    /// Intended time of request `k` (from 0).
    pub fn at(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((self.offset_ns + k as f64 * self.interval_ns) as u64)
    }

    /// Intended time of the next request; advances.
    pub fn next_send(&mut self) -> Instant {
        let t = self.at(self.next);
        self.next += 1;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_connections_evenly() {
        let start = Instant::now();
        // 1000 req/s over 4 connections: every 4 ms each, staggered by 1 ms.
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|c| {
                let mut s = Schedule::new(start, 1000.0, c, 4);
                (0..250).map(move |_| s.next_send() - start)
            })
            .collect();
        all.sort();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, Duration::from_millis(i as u64), "request {i}");
        }
    }

    #[test]
    fn counts_in_a_window_match_the_rate() {
        // 2000 req/s for 2 s over 16 connections: 4000 intended sends.
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        let count: usize = (0..16)
            .map(|c| {
                let mut s = Schedule::new(start, 2000.0, c, 16);
                std::iter::from_fn(|| Some(s.next_send())).take_while(|t| *t < end).count()
            })
            .sum();
        assert_eq!(count, 4000);
    }

    #[test]
    fn no_drift_over_long_runs() {
        let start = Instant::now();
        let s = Schedule::new(start, 3.0, 0, 1);
        // 1/3 s steps: request 3 million is at exactly 1 million seconds, to the µs.
        let t = s.at(3_000_000) - start;
        assert!(t.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_micros(1), "{t:?}");
    }
}
