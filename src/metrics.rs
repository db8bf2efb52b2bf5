//! Counters and latency histograms, per worker and per product.
//!
//! Each worker writes its own [`WorkerStats`] (no atomics, no locks on the
//! hot path) and publishes a copy into its slot of the shared [`StatsHub`]
//! a few times a second; the status port merges the slots. Metric names live
//! here as constants. This module never does I/O.

use std::ops::Deref;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::fault::Cause;
use crate::route::PRODUCTS;

pub const M_REQUESTS: &str = "fipsrelay_requests_total";
pub const M_BYTES_IN: &str = "fipsrelay_request_body_bytes_total";
pub const M_BYTES_OUT: &str = "fipsrelay_response_body_bytes_total";
pub const M_BYTES_COPIED: &str = "fipsrelay_body_bytes_copied_total";
pub const M_UPSTREAM_ERRORS: &str = "fipsrelay_upstream_errors_total";
pub const M_POOL_HITS: &str = "fipsrelay_pool_hits_total";
pub const M_POOL_MISSES: &str = "fipsrelay_pool_misses_total";
pub const M_REFUSED: &str = "fipsrelay_refused_requests_total";
pub const M_OPEN_CONNECTIONS: &str = "fipsrelay_open_connections";
pub const M_UPSTREAM_SESSIONS_OPEN: &str = "fipsrelay_upstream_sessions_open";
pub const M_UPSTREAM_SESSIONS_IDLE: &str = "fipsrelay_upstream_sessions_idle";
pub const M_UPSTREAM_H2_CONNECTIONS: &str = "fipsrelay_upstream_h2_connections";
pub const M_UPSTREAM_H2_WRITES: &str = "fipsrelay_upstream_h2_writes_total";
pub const M_UPSTREAM_H2_FRAMES: &str = "fipsrelay_upstream_h2_frames_written_total";
pub const M_UPSTREAM_H2_STREAMS: &str = "fipsrelay_upstream_h2_streams_total";
pub const M_UPSTREAM_H2_REPLAYS: &str = "fipsrelay_upstream_h2_replays_total";
pub const M_UPSTREAM_H2_PINGS: &str = "fipsrelay_upstream_h2_pings_total";
pub const M_UPSTREAM_H2_WINDOW_DETOURS: &str = "fipsrelay_upstream_h2_window_detours_total";
pub const M_UPSTREAM_H2_FALLBACK: &str = "fipsrelay_upstream_h2_http1_fallback";
pub const M_UPSTREAM_ADDRESS_UP: &str = "fipsrelay_upstream_address_up";
pub const M_UPSTREAM_ADDRESSES_UP: &str = "fipsrelay_upstream_addresses_up";
pub const M_UPSTREAM_ADDRESSES: &str = "fipsrelay_upstream_addresses";
pub const M_UPSTREAM_TRANSITIONS: &str = "fipsrelay_upstream_transitions_total";
pub const M_UPSTREAM_PANIC: &str = "fipsrelay_upstream_panic";
pub const M_UPSTREAM_PANIC_PROBES: &str = "fipsrelay_upstream_panic_probes_total";
pub const M_LATENCY: &str = "fipsrelay_request_duration_seconds";
pub const M_UPTIME: &str = "fipsrelay_uptime_seconds";
pub const M_FIPS_MODULE: &str = "fipsrelay_fips_module_info";
pub const M_PROXY_INFO: &str = "fipsrelay_proxy_info";
pub const M_UPSTREAM_VIA_PROXY: &str = "fipsrelay_upstream_via_proxy";
pub const M_PROXY_TUNNELS: &str = "fipsrelay_proxy_tunnels_total";
pub const M_PROXY_CONNECT: &str = "fipsrelay_proxy_connect_seconds";
pub const M_PROXY_FAILURES: &str = "fipsrelay_proxy_connect_failures_total";
pub const M_BUILD_INFO: &str = "fipsrelay_build_info";
// The process series under the names every Prometheus client library uses
// (and Datadog's check reads `process_start_time_seconds` by that name).
pub const M_PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const M_PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const M_PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const M_PROCESS_MAX_FDS: &str = "process_max_fds";
pub const M_PROCESS_START: &str = "process_start_time_seconds";

/// How often a worker publishes its stats.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 hour, 2 significant digits (about 26 KiB of counts).
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds")
}

/// A product's request latency in µs. Its counts (about 26 KiB) are only
/// allocated when the first value is recorded or merged in, so products the
/// Agent never uses cost nothing, per worker and per hub slot. Reads go
/// through `Deref` to a [`Histogram`] (a shared empty one until then).
#[derive(Default)]
pub struct Latency(Option<Histogram<u64>>);

impl Latency {
    pub fn record(&mut self, micros: u64) {
        let _ = self.0.get_or_insert_with(new_histogram).record(micros);
    }

    fn add(&mut self, o: &Latency) {
        if let Some(src) = o.0.as_ref().filter(|h| !h.is_empty()) {
            let _ = self.0.get_or_insert_with(new_histogram).add(src);
        }
    }
}

impl Deref for Latency {
    type Target = Histogram<u64>;

    fn deref(&self) -> &Histogram<u64> {
        static EMPTY: OnceLock<Histogram<u64>> = OnceLock::new();
        self.0.as_ref().unwrap_or_else(|| EMPTY.get_or_init(new_histogram))
    }
}

impl Clone for Latency {
    fn clone(&self) -> Self {
        Latency(self.0.clone())
    }

    /// Copies into the counts already allocated (publishing runs a few times a second).
    fn clone_from(&mut self, o: &Self) {
        match (&mut self.0, &o.0) {
            (Some(dst), Some(src)) => {
                let _ = dst.set_to(src);
            }
            (dst, src) => dst.clone_from(src),
        }
    }
}

#[derive(Default)]
pub struct ProductStats {
    /// By status class: 1xx..5xx.
    pub requests: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Body bytes (either direction) copied in user space on their way:
    /// what is not read straight into a record buffer, or written to the
    /// Agent from the buffer it was opened in.
    pub bytes_copied: u64,
    pub errors: [u64; Cause::ALL.len()],
    pub refused: u64,
    pub pool_hits: u64,
    pub pool_misses: u64,
    pub open_connections: i64,
    /// Request latency in µs, from a complete head to a complete answer.
    pub latency: Latency,
}

impl Clone for ProductStats {
    fn clone(&self) -> Self {
        ProductStats { latency: self.latency.clone(), ..*self }
    }

    /// Keeps the latency counts' allocation (see [`Latency::clone_from`]).
    fn clone_from(&mut self, o: &Self) {
        let mut latency = std::mem::take(&mut self.latency);
        latency.clone_from(&o.latency);
        *self = ProductStats { latency, ..*o };
    }
}

impl ProductStats {
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }

    pub fn error(&self, cause: Cause) -> u64 {
        self.errors[cause.index()]
    }

    fn add(&mut self, o: &ProductStats) {
        for i in 0..5 {
            self.requests[i] += o.requests[i];
        }
        for i in 0..self.errors.len() {
            self.errors[i] += o.errors[i];
        }
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.bytes_copied += o.bytes_copied;
        self.refused += o.refused;
        self.pool_hits += o.pool_hits;
        self.pool_misses += o.pool_misses;
        self.open_connections += o.open_connections;
        self.latency.add(&o.latency);
    }
}

#[derive(Clone, Default)]
pub struct UpstreamStats {
    pub sessions_open: i64,
    pub sessions_idle: i64,
    /// HTTP/2 connections (each a TLS session not counted above).
    pub h2_connections: i64,
    /// HTTP/2 counters: TLS writes, frames in them, streams opened,
    /// requests sent again (refused unprocessed), liveness PINGs.
    pub h2_writes: u64,
    pub h2_frames: u64,
    pub h2_streams: u64,
    pub h2_replays: u64,
    pub h2_pings: u64,
    /// Request bodies longer than the intake's HTTP/2 window that went over
    /// an HTTP/1.1 session instead (no round trip waiting for
    /// WINDOW_UPDATE).
    pub h2_window_detours: u64,
    /// Workers that speak HTTP/1.1 to the host because it picked it by ALPN
    /// (`upstream.protocol = "auto"`).
    pub h2_http1_fallback: i64,
}

/// One worker's counters (or the sum over all workers).
pub struct WorkerStats {
    pub products: Vec<ProductStats>,
    pub upstreams: Vec<UpstreamStats>,
}

impl Clone for WorkerStats {
    fn clone(&self) -> Self {
        WorkerStats { products: self.products.clone(), upstreams: self.upstreams.clone() }
    }

    /// Element-wise, so publishing into a hub slot reuses its allocations.
    fn clone_from(&mut self, o: &Self) {
        self.products.clone_from(&o.products);
        self.upstreams.clone_from(&o.upstreams);
    }
}

impl WorkerStats {
    pub fn new(upstreams: usize) -> Self {
        WorkerStats {
            products: (0..PRODUCTS.len()).map(|_| ProductStats::default()).collect(),
            upstreams: vec![UpstreamStats::default(); upstreams],
        }
    }

    pub fn product(&mut self, offset: u16) -> &mut ProductStats {
        &mut self.products[offset as usize]
    }

    pub fn record_answer(&mut self, offset: u16, status: u16, latency: Duration) {
        let p = self.product(offset);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        p.requests[class] += 1;
        p.latency.record((latency.as_micros() as u64).max(1));
    }

    pub fn record_error(&mut self, offset: u16, cause: Cause) {
        self.product(offset).errors[cause.index()] += 1;
    }

    fn add(&mut self, o: &WorkerStats) {
        for (a, b) in self.products.iter_mut().zip(&o.products) {
            a.add(b);
        }
        for (a, b) in self.upstreams.iter_mut().zip(&o.upstreams) {
            a.sessions_open += b.sessions_open;
            a.sessions_idle += b.sessions_idle;
            a.h2_connections += b.h2_connections;
            a.h2_writes += b.h2_writes;
            a.h2_frames += b.h2_frames;
            a.h2_streams += b.h2_streams;
            a.h2_replays += b.h2_replays;
            a.h2_pings += b.h2_pings;
            a.h2_window_detours += b.h2_window_detours;
            a.h2_http1_fallback += b.h2_http1_fallback;
        }
    }
}

/// Where workers publish and the status port reads.
pub struct StatsHub {
    slots: Vec<Mutex<WorkerStats>>,
    pub started: Instant,
    pub upstreams: usize,
}

impl StatsHub {
    pub fn new(workers: usize, upstreams: usize) -> Self {
        StatsHub {
            slots: (0..workers).map(|_| Mutex::new(WorkerStats::new(upstreams))).collect(),
            started: Instant::now(),
            upstreams,
        }
    }

    /// Called by worker `id` (a few times a second, never per request).
    pub fn publish(&self, id: usize, stats: &WorkerStats) {
        if let Ok(mut slot) = self.slots[id].lock() {
            slot.clone_from(stats);
        }
    }

    /// The sum over all workers.
    pub fn merged(&self) -> WorkerStats {
        let mut total = WorkerStats::new(self.upstreams);
        for s in &self.slots {
            if let Ok(s) = s.lock() {
                total.add(&s);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_workers() {
        let hub = StatsHub::new(2, 3);
        let mut a = WorkerStats::new(3);
        a.record_answer(1, 202, Duration::from_millis(2));
        a.record_error(1, Cause::Timeout);
        let mut b = WorkerStats::new(3);
        b.record_answer(1, 502, Duration::from_millis(4));
        b.upstreams[0].sessions_open = 2;
        hub.publish(0, &a);
        hub.publish(1, &b);
        let m = hub.merged();
        assert_eq!(m.products[1].total_requests(), 2);
        assert_eq!(m.products[1].requests[1], 1);
        assert_eq!(m.products[1].requests[4], 1);
        assert_eq!(m.products[1].error(Cause::Timeout), 1);
        assert_eq!(m.products[1].latency.len(), 2);
        assert_eq!(m.upstreams[0].sessions_open, 2);
    }

    #[test]
    fn latency_counts_allocated_on_first_value() {
        let mut w = WorkerStats::new(1);
        assert!(w.products.iter().all(|p| p.latency.0.is_none()));
        assert!(w.products[2].latency.is_empty());
        w.record_answer(2, 200, Duration::from_millis(3));
        assert!(w.products[2].latency.0.is_some());
        assert!(w.products[3].latency.0.is_none());

        let hub = StatsHub::new(1, 1);
        hub.publish(0, &w);
        w.record_answer(2, 200, Duration::from_millis(5));
        hub.publish(0, &w);
        let m = hub.merged();
        assert_eq!(m.products[2].latency.len(), 2);
        assert_eq!(m.products[2].latency.max(), w.products[2].latency.max());
        assert!(m.products[3].latency.0.is_none());
    }
}
