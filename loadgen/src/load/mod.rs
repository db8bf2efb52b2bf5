//! The load generator behind the `loadgen` binary, usable in-process through
//! [`run`]: plaintext HTTP/1.1 POSTs shaped like the Datadog Agent's, sent to
//! loopback targets (a fipsrelay, or anything that speaks HTTP/1.1) in a
//! closed loop or at a fixed open-loop rate with coordinated-omission
//! corrected latencies, optionally checked body by body against the mock
//! intake (`--verify`). It never speaks TLS to the targets and never loads a
//! non-loopback address unless told to; every run is bounded in time.
//!
//! Modules: `target` (URLs, safety check), `payload` (bodies and their
//! size distributions: fixed, uniform, log-uniform), `schedule`
//! (open-loop pacing), `http` (one client connection), `histogram`
//! (latencies), `engine` (threads and request loops), `report` (results),
//! `verify` (mock comparison).

mod engine;
pub mod histogram;
pub mod http;
pub mod pace;
pub mod payload;
pub mod report;
pub mod schedule;
pub mod target;
pub mod verify;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use payload::{BodySize, Compression, PayloadKind, SizeSpread};
pub use report::{ErrorCounts, LoopMode, Report, VerifyReport, REPORT_SCHEMA};
pub use target::Target;
pub use verify::VerifyOptions;

use engine::{Live, Plan, StartGate, ThreadStats};
use payload::PayloadPool;
use verify::{MockControl, SentBodies};

/// Longest `duration` (and `warmup`) accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most connections accepted.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Most threads accepted.
pub const MAX_THREADS: usize = 1024;
/// Highest `rate` accepted, req/s.
pub const MAX_RATE: f64 = 10_000_000.0;
pub const DEFAULT_CONNECTIONS: usize = 16;
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run. `LoadOptions::default()` is a 10 s closed-loop run with 16
/// connections of 1 KiB uncompressed series; give at least one target.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// `http://host:port/path` URLs; connections are spread over them
    /// round-robin.
    pub targets: Vec<String>,
    /// Accept non-loopback targets.
    pub allow_remote: bool,
    pub connections: usize,
    /// OS threads, each with its own current-thread runtime.
    pub threads: usize,
    /// Pin thread i to core i (mod the core count).
    pub pin: bool,
    /// Measured time, after `warmup`.
    pub duration: Duration,
    /// Time before measurement starts; its requests are not recorded.
    pub warmup: Duration,
    /// Stop after this many measured requests.
    pub requests: Option<u64>,
    /// Per request, from the moment it is written.
    pub timeout: Duration,
    /// Open loop at this many req/s in all; `None` = closed loop.
    pub rate: Option<f64>,
    /// Open loop: busy-wait (yielding) this long before each send instead of
    /// sleeping through it, for a client with a CPU of its own. Zero: sleep.
    pub spin: Duration,
    /// Open loop: release each request at the next multiple of this after
    /// its scheduled time (what a timer wheel with this tick does; tokio's
    /// is 1 ms), measuring from that release. Bunches sends, for comparing
    /// with tools that pace so (oha). Zero: send at the scheduled time.
    pub quantum: Duration,
    pub payload: PayloadKind,
    /// Body sizes: fixed, uniform or log-uniform between two bounds.
    pub body_size: BodySize,
    /// Seeds each connection's generator (sizes drawn, templates picked):
    /// the same seed, connection count and body size repeat the same
    /// sequence of sizes. Body bytes still differ between runs (nonce).
    pub seed: u64,
    pub compression: Compression,
    /// Check the bodies against a mock intake (resets it first).
    pub verify: Option<VerifyOptions>,
    /// Print a progress line on stderr each second.
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            targets: Vec::new(),
            allow_remote: false,
            connections: DEFAULT_CONNECTIONS,
            threads: 1,
            pin: false,
            duration: DEFAULT_DURATION,
            warmup: Duration::ZERO,
            requests: None,
            timeout: DEFAULT_TIMEOUT,
            rate: None,
            spin: Duration::ZERO,
            quantum: Duration::ZERO,
            payload: PayloadKind::Series,
            body_size: BodySize::default(),
            seed: 0,
            compression: Compression::None,
            verify: None,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no target; give --target http://127.0.0.1:9804/api/v2/series or --ports 9804")]
    NoTargets,
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("cannot start a load thread or its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a load thread panicked")]
    ThreadPanicked,
    #[error("the run was cancelled before it started")]
    Cancelled,
    #[error(transparent)]
    Compress(#[from] payload::CompressError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
}

impl LoadOptions {
    fn validate(&self) -> Result<(), LoadError> {
        let bad = |why: String| Err(LoadError::Option(why));
        if self.targets.is_empty() {
            return Err(LoadError::NoTargets);
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return bad(format!("connections must be 1..={MAX_CONNECTIONS}, not {}", self.connections));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad(format!("threads must be 1..={MAX_THREADS}, not {}", self.threads));
        }
        if self.threads > self.connections {
            return bad(format!(
                "{} threads for {} connections: give at least one connection per thread",
                self.threads, self.connections
            ));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!("duration must be above 0 and at most 1h, not {:?}", self.duration));
        }
        if self.warmup > MAX_DURATION {
            return bad(format!("warmup must be at most 1h, not {:?}", self.warmup));
        }
        if self.timeout.is_zero() {
            return bad("timeout must be above 0".into());
        }
        if self.spin > Duration::from_millis(10) {
            return bad(format!("--spin must be at most 10ms, not {:?}", self.spin));
        }
        if self.quantum > Duration::from_secs(1) {
            return bad(format!("--quantum must be at most 1s, not {:?}", self.quantum));
        }
        if !self.quantum.is_zero() && self.rate.is_none() {
            return bad("--quantum applies to the open loop: give --rate too".to_string());
        }
        if !self.spin.is_zero() && self.rate.is_none() {
            return bad("--spin applies to the open loop: give --rate too".to_string());
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate <= MAX_RATE) {
                return bad(format!("rate must be above 0 and at most {MAX_RATE} req/s, not {rate}"));
            }
        }
        if self.requests == Some(0) {
            return bad("requests must be at least 1".into());
        }
        Ok(())
    }
}

/// A fake API key: 32 lowercase hex digits, different each run.
fn fake_api_key(nonce: u64) -> String {
    format!("{:016x}{:016x}", nonce, nonce.rotate_left(17) ^ 0x5DEE_CE66_D1CE_CAFE)
}

fn run_nonce() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    payload::Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}

/// Runs the load described by `opts` to its end and reports what happened.
/// Blocks the calling thread; starts `opts.threads` threads of its own.
/// A verify mismatch is not an error: see `report.verify`.
pub fn run(opts: LoadOptions) -> Result<Report, LoadError> {
    opts.validate()?;
    let targets = opts.targets.iter().map(|t| Target::parse(t, opts.allow_remote)).collect::<Result<Vec<_>, _>>()?;
    let control = opts.verify.as_ref().map(MockControl::new).transpose()?;
    if let Some(control) = &control {
        control.reset()?;
    }
    let nonce = run_nonce();
    let pool = Arc::new(PayloadPool::new(opts.payload, opts.compression, opts.body_size, nonce));
    let plan = Arc::new(Plan {
        targets,
        pool,
        connections: opts.connections,
        threads: opts.threads,
        pin: opts.pin,
        rate: opts.rate,
        spin: opts.spin,
        quantum: opts.quantum,
        warmup: opts.warmup,
        duration: opts.duration,
        timeout: opts.timeout,
        requests: opts.requests,
        collect_hashes: control.is_some(),
        ok_filter: control.is_some().then(|| Arc::new(crate::digest::SentFilter::default())),
        api_key: fake_api_key(nonce),
        seed: opts.seed,
        claimed: AtomicU64::new(0),
    });

    let gate = Arc::new(StartGate::new(plan.threads));
    let lives: Vec<Arc<Live>> = (0..plan.threads).map(|_| Arc::new(Live::default())).collect();
    let cores = engine::cores_for(plan.threads, plan.pin);
    let started = Instant::now();
    let mut handles = Vec::with_capacity(plan.threads);
    for (t, core) in cores.into_iter().enumerate() {
        let (plan, thread_gate, live) = (Arc::clone(&plan), Arc::clone(&gate), Arc::clone(&lives[t]));
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || engine::thread_main(plan, t, core, thread_gate, live));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Release the threads already waiting for this one.
                gate.cancel();
                for h in handles {
                    let _ = h.join();
                }
                return Err(LoadError::Runtime(e));
            }
        }
    }

    let mut last = (Instant::now(), 0u64);
    let mut next_print = Instant::now() + std::time::Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if opts.progress && Instant::now() >= next_print {
            engine::print_progress(&lives, started, &mut last);
            next_print += Duration::from_secs(1);
        }
    }
    if opts.progress {
        eprintln!();
    }
    let mut total = ThreadStats::default();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(stats)) => total.merge(stats),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => first_error = first_error.or(Some(LoadError::ThreadPanicked)),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Measured window: from the end of warm-up to the last measured answer
    // (or the planned end when nothing was measured).
    let warm_end = gate.started().unwrap_or(started) + opts.warmup;
    let finished = total.last_done.unwrap_or_else(Instant::now).max(warm_end);
    let duration_s = finished.duration_since(warm_end).as_secs_f64();

    let verify = match &control {
        Some(control) => {
            let sent = SentBodies {
                ok: total.ok_digest.take().map(|d| *d).unwrap_or_default(),
                ok_filter: plan.ok_filter.clone(),
                unconfirmed: std::mem::take(&mut total.unconfirmed_hashes),
                unconfirmed_truncated: total.unconfirmed_truncated,
            };
            Some(verify::compare(&sent, &control.digest()?))
        }
        None => None,
    };

    let mut report = Report {
        schema: REPORT_SCHEMA,
        mode: if opts.rate.is_some() { LoopMode::Open } else { LoopMode::Closed },
        rate: opts.rate,
        targets: plan.targets.iter().map(|t| t.url.clone()).collect(),
        connections: opts.connections,
        threads: opts.threads,
        payload: opts.payload,
        compression: opts.compression,
        body_size: opts.body_size.to_string(),
        seed: opts.seed,
        duration_s,
        requests: total.requests,
        responses: total.responses,
        status: total.status.iter().enumerate().filter(|(_, &n)| n > 0).map(|(s, &n)| (s as u16, n)).collect(),
        ok: total.status[200..300].iter().sum(),
        errors: total.errors,
        connections_opened: total.connections_opened,
        sent_bytes: total.sent_bytes,
        received_bytes: total.received_bytes,
        latency_us: total.latencies.summary(),
        send_lag_us: total.send_lag.summary(),
        verify,
        ..Report::default()
    };
    report.compute_rates();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_options() {
        let ok = LoadOptions { targets: vec!["http://127.0.0.1:1/".into()], ..LoadOptions::default() };
        assert!(ok.validate().is_ok());
        assert!(matches!(LoadOptions::default().validate(), Err(LoadError::NoTargets)));
        for bad in [
            LoadOptions { connections: 0, ..ok.clone() },
            LoadOptions { threads: 17, ..ok.clone() },
            LoadOptions { duration: Duration::ZERO, ..ok.clone() },
            LoadOptions { duration: Duration::from_secs(3601), ..ok.clone() },
            LoadOptions { rate: Some(0.0), ..ok.clone() },
            LoadOptions { rate: Some(f64::NAN), ..ok.clone() },
            LoadOptions { spin: Duration::from_micros(100), ..ok.clone() },
            LoadOptions { rate: Some(10.0), spin: Duration::from_millis(11), ..ok.clone() },
            LoadOptions { requests: Some(0), ..ok.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(LoadError::Option(_))), "{bad:?}");
        }
    }

    #[test]
    fn refuses_remote_targets() {
        let opts = LoadOptions { targets: vec!["http://192.0.2.1:9804/".into()], ..LoadOptions::default() };
        assert!(matches!(run(opts), Err(LoadError::Target(target::TargetError::NotLoopback(..)))));
    }

    #[test]
    fn api_key_is_32_hex() {
        let key = fake_api_key(run_nonce());
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
