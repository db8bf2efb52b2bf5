//! The result of a load run: the [`Report`] that `--json` writes (a stable
//! schema other tools parse) and its human-readable text form. Owns
//! formatting only; it measures nothing.

use std::collections::BTreeMap;
use std::fmt;

use super::histogram::LatencySummary;
use super::pace::SendLagSummary;
use super::payload::{Compression, PayloadKind};

/// Version of the JSON layout below; bumped on any incompatible change.
pub const REPORT_SCHEMA: u32 = 1;

/// Everything a run measured. Serialized by `loadgen --json FILE` as one
/// JSON object; field names and units are part of the interface (the
/// relay's demo and benches parse it). Fields are never removed within a
/// `schema` version; new ones may be added.
///
/// ```text
/// {
///   "schema": 1,                      // REPORT_SCHEMA
///   "mode": "closed" | "open",        // open = --rate given
///   "rate": 2000.0 | null,            // asked req/s (open loop), total
///   "targets": ["http://127.0.0.1:9804/api/v2/series", …],
///   "connections": 16,                // asked
///   "threads": 1,
///   "payload": "series" | "logs" | "traces" | "raw",
///   "compression": "none" | "deflate" | "zstd",
///   "body_size": "1024" | "1024-65536" | "log-uniform:512..1048576",   // uncompressed bytes: fixed, uniform or log-uniform range
///   "seed": 0,                        // --seed: with the same body_size and connections, the same sizes
///   "duration_s": 10.003,             // measured window: end of warm-up to last answer, seconds
///   "requests": 40000,                // measured requests sent (answered + errors)
///   "responses": 39990,               // measured requests with a complete answer
///   "status": {"202": 39980, "503": 10},   // answers per HTTP status
///   "ok": 39980,                      // answers with a 2xx status
///   "errors": {"connect": 0, "reset": 10, "timeout": 0, "other": 0, "total": 10},
///   "connections_opened": 26,         // TCP connections opened, warm-up included
///   "req_per_s": 3998.8,              // requests / duration_s
///   "ok_per_s": 3996.8,               // ok / duration_s
///   "sent_bytes": 41720000,           // request heads + bodies written (measured requests)
///   "received_bytes": 3680000,        // answer bytes read (measured requests)
///   "sent_mb_per_s": 4.17,            // MB = 10^6 bytes
///   "received_mb_per_s": 0.37,
///   "latency_us": {                   // answered requests only, µs; open loop: from the intended send time
///     "count": 39990, "min": 80, "mean": 150.2, "stdev": 30.1,
///     "p50": 140, "p90": 190, "p99": 400, "p99_9": 900, "p99_99": 2100, "max": 3500
///   },
///   "send_lag_us": null | {           // open loop only: actual send − when it could leave, µs (0.1 steps)
///     "count": 39990, "p50": 3.2, "p99": 11.5, "max": 240.0
///   },
///   "send_lag_unreliable": false,     // true: p99 lag > max(50 µs, 20 % of latency p99); latency figures carry client delay
///   "verify": null | {                // only with --verify
///     "matched": true,                // proven: the mock holds exactly the 2xx bodies (plus unconfirmed ones)
///     "bodies": 39980,                // bodies answered 2xx, warm-up included (the multiset compared)
///     "mock_bodies": 39985,           // bodies the mock recorded
///     "mock_requests": 39985,         // requests the mock counted
///     "lost": 0,                      // answered 2xx, absent at the mock (a lower bound when complete is false)
///     "duplicated": 0,                // at the mock more often than sent
///     "corrupted": 0,                 // at the mock, never sent at all
///     "unconfirmed": 5,               // sent without a 2xx answer, yet at the mock (not a mismatch)
///     "complete": true                // false: too many bodies differ to name each; only "lost" is then proven
///   }
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub schema: u32,
    pub mode: LoopMode,
    pub rate: Option<f64>,
    pub targets: Vec<String>,
    pub connections: usize,
    pub threads: usize,
    pub payload: PayloadKind,
    pub compression: Compression,
    pub body_size: String,
    #[serde(default)]
    pub seed: u64,
    pub duration_s: f64,
    pub requests: u64,
    pub responses: u64,
    pub status: BTreeMap<u16, u64>,
    pub ok: u64,
    pub errors: ErrorCounts,
    pub connections_opened: u64,
    pub req_per_s: f64,
    pub ok_per_s: f64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_mb_per_s: f64,
    pub received_mb_per_s: f64,
    pub latency_us: LatencySummary,
    #[serde(default)]
    pub send_lag_us: Option<SendLagSummary>,
    #[serde(default)]
    pub send_lag_unreliable: bool,
    pub verify: Option<VerifyReport>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    /// Each connection sends its next request when the answer is complete.
    #[default]
    Closed,
    /// Requests leave at intended times (`--rate`), answered or not.
    Open,
}

/// Requests that got no complete answer, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorCounts {
    /// The TCP connection could not be opened.
    pub connect: u64,
    /// Reset, broken pipe, or closed before the answer was complete.
    pub reset: u64,
    /// No complete answer within `--timeout`.
    pub timeout: u64,
    /// Malformed answer or any other failure.
    pub other: u64,
    pub total: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.other += other.other;
        self.total += other.total;
    }
}

/// Outcome of `--verify`: the bodies the client saw accepted against the
/// bodies the mock intake recorded, compared as multisets of hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub matched: bool,
    pub bodies: u64,
    pub mock_bodies: u64,
    pub mock_requests: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub unconfirmed: u64,
    pub complete: bool,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.matched {
            write!(f, "verify: MATCH ({} bodies)", self.bodies)?;
        } else if !self.complete && self.lost > 0 {
            write!(
                f,
                "verify: MISMATCH lost>={} (the mock recorded {} bodies, {} were answered 2xx; too many differ to name each)",
                self.lost, self.mock_bodies, self.bodies
            )?;
        } else if !self.complete {
            write!(
                f,
                "verify: UNDECIDED (the mock recorded {} bodies, {} were answered 2xx; the difference is too large to tell \
                 which of the bodies sent without a 2xx answer reached it; nothing is proven lost)",
                self.mock_bodies, self.bodies
            )?;
        } else {
            write!(
                f,
                "verify: MISMATCH lost={} duplicated={} corrupted={}",
                self.lost, self.duplicated, self.corrupted
            )?;
        }
        if self.unconfirmed > 0 {
            write!(f, " unconfirmed={}", self.unconfirmed)?;
        }
        Ok(())
    }
}

fn mb(bytes_per_s: f64) -> f64 {
    bytes_per_s / 1e6
}

impl Report {
    /// Fills the rates from the counters and `duration_s`.
    pub(crate) fn compute_rates(&mut self) {
        let d = if self.duration_s > 0.0 { self.duration_s } else { f64::INFINITY };
        self.req_per_s = self.requests as f64 / d;
        self.ok_per_s = self.ok as f64 / d;
        self.sent_mb_per_s = mb(self.sent_bytes as f64 / d);
        self.received_mb_per_s = mb(self.received_bytes as f64 / d);
        self.send_lag_unreliable = self.send_lag_us.as_ref().is_some_and(|l| l.unreliable(self.latency_us.p99));
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match (self.mode, self.rate) {
            (LoopMode::Open, Some(r)) => format!("open loop at {r} req/s"),
            _ => "closed loop".to_owned(),
        };
        let name = |v: serde_json::Result<serde_json::Value>| {
            v.ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        };
        writeln!(
            f,
            "{mode}, {} connections on {} thread(s), {} bodies of {} bytes (seed {}), compression {}, {:.2}s measured",
            self.connections,
            self.threads,
            name(serde_json::to_value(self.payload)),
            self.body_size,
            self.seed,
            name(serde_json::to_value(self.compression)),
            self.duration_s
        )?;
        for t in &self.targets {
            writeln!(f, "  target {t}")?;
        }
        writeln!(
            f,
            "requests      {} ({:.1} req/s), answered {}, 2xx {}",
            self.requests, self.req_per_s, self.responses, self.ok
        )?;
        let statuses: Vec<String> = self.status.iter().map(|(s, n)| format!("{s}={n}")).collect();
        writeln!(f, "status        {}", if statuses.is_empty() { "-".to_owned() } else { statuses.join(" ") })?;
        let e = &self.errors;
        writeln!(
            f,
            "errors        {} (connect={} reset={} timeout={} other={})",
            e.total, e.connect, e.reset, e.timeout, e.other
        )?;
        writeln!(f, "connections   {} opened", self.connections_opened)?;
        writeln!(
            f,
            "throughput    sent {:.2} MB/s ({} bytes), received {:.2} MB/s ({} bytes)",
            self.sent_mb_per_s, self.sent_bytes, self.received_mb_per_s, self.received_bytes
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "latency       p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}, {} samples)",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p99_9),
            ms(l.p99_99),
            ms(l.max),
            ms(l.mean as u64),
            l.count
        )?;
        if let Some(lag) = &self.send_lag_us {
            writeln!(
                f,
                "send lag      p50 {:.1}µs  p99 {:.1}µs  max {:.1}µs  (actual send − intended; the client's own delay)",
                lag.p50, lag.p99, lag.max
            )?;
            if self.send_lag_unreliable {
                writeln!(
                    f,
                    "WARNING       send lag p99 {:.1}µs is above {:.1}µs: the client sent late (its CPU waking from idle, \
                     or saturated), so the latency figures above include its own delay; on a client with a CPU of its own \
                     use --spin 100us, else fewer req/s per thread or more --threads",
                    lag.p99,
                    SendLagSummary::limit_us(l.p99)
                )?;
            }
        }
        if let Some(v) = &self.verify {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_names_are_stable() {
        let mut r = Report { schema: REPORT_SCHEMA, requests: 100, ok: 90, duration_s: 2.0, ..Report::default() };
        r.status.insert(202, 90);
        r.verify = Some(VerifyReport { matched: true, bodies: 90, complete: true, ..VerifyReport::default() });
        r.compute_rates();
        assert_eq!(r.req_per_s, 50.0);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "schema",
            "mode",
            "rate",
            "targets",
            "connections",
            "threads",
            "payload",
            "compression",
            "body_size",
            "duration_s",
            "requests",
            "responses",
            "status",
            "ok",
            "errors",
            "connections_opened",
            "req_per_s",
            "ok_per_s",
            "sent_bytes",
            "received_bytes",
            "sent_mb_per_s",
            "received_mb_per_s",
            "latency_us",
            "verify",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["mode"], "closed");
        assert_eq!(json["payload"], "series");
        assert_eq!(json["status"]["202"], 90);
        assert!(json["latency_us"].get("p99_99").is_some());
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert!(r.to_string().contains("verify: MATCH (90 bodies)"));
    }

    #[test]
    fn verify_lines() {
        let v =
            VerifyReport { lost: 1, duplicated: 2, corrupted: 3, unconfirmed: 4, complete: true, ..Default::default() };
        assert_eq!(v.to_string(), "verify: MISMATCH lost=1 duplicated=2 corrupted=3 unconfirmed=4");
    }
}
