//! Latency recording: a thin wrapper over an HDR histogram in microseconds
//! (3 significant figures, 1 µs to 1 hour, values above saturate) and the
//! percentile summary the report prints. Owns no clock; callers pass
//! durations.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency tracked exactly enough (1 hour, in µs); longer ones are
/// recorded as this.
const MAX_TRACKED_US: u64 = 3_600_000_000;
const SIGNIFICANT_FIGURES: u8 = 3;

/// Latencies of one thread, or of a whole run after [`Latencies::merge`].
#[derive(Clone, Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_FIGURES)
            .expect("1 µs .. 1 h at 3 significant figures is a valid histogram");
        Latencies { histogram }
    }

    /// Records `latency`, rounded down to the µs (at least 1 µs).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_TRACKED_US);
        self.histogram.record(us).expect("value is clamped into the histogram's range");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.add(&other.histogram).expect("histograms with equal bounds always add");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Latency at `percentile` (0–100) in µs; 0 when empty.
    pub fn percentile_us(&self, percentile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_percentile(percentile)
    }

    pub fn summary(&self) -> LatencySummary {
        let empty = self.histogram.is_empty();
        LatencySummary {
            count: self.count(),
            min: if empty { 0 } else { self.histogram.min() },
            mean: if empty { 0.0 } else { self.histogram.mean() },
            stdev: if empty { 0.0 } else { self.histogram.stdev() },
            p50: self.percentile_us(50.0),
            p90: self.percentile_us(90.0),
            p99: self.percentile_us(99.0),
            p99_9: self.percentile_us(99.9),
            p99_99: self.percentile_us(99.99),
            max: if empty { 0 } else { self.histogram.max() },
        }
    }
}

/// Latency percentiles in microseconds. Values are HDR bucket values: exact
/// to 3 significant figures (the `max` is the highest value equivalent to
/// the largest recorded one).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Answers whose latency was recorded.
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: u64, b: u64) -> bool {
        // 3 significant figures: within 0.1%.
        a.abs_diff(b) * 1000 <= b.max(1)
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut l = Latencies::new();
        for us in 1..=10_000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min, 1);
        assert!(close(s.p50, 5_000), "{s:?}");
        assert!(close(s.p90, 9_000), "{s:?}");
        assert!(close(s.p99, 9_900), "{s:?}");
        assert!(close(s.p99_9, 9_990), "{s:?}");
        assert!(close(s.max, 10_000), "{s:?}");
        assert!((s.mean - 5000.5).abs() < 10.0, "{s:?}");
    }

    #[test]
    fn a_stall_shows_in_the_tail_only() {
        let mut l = Latencies::new();
        for _ in 0..9_990 {
            l.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            l.record(Duration::from_secs(2));
        }
        let s = l.summary();
        assert!(close(s.p50, 100) && close(s.p99, 100), "{s:?}");
        assert!(close(s.p99_99, 2_000_000), "{s:?}");
        assert!(close(s.max, 2_000_000), "{s:?}");
    }

    #[test]
    fn merge_clamp_and_empty() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_nanos(10)); // below 1 µs: counted as 1 µs
        b.record(Duration::from_secs(7200)); // above 1 h: saturates
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.summary().min, 1);
        assert!(close(a.summary().max, MAX_TRACKED_US));
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }
}
