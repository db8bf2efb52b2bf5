//! The run itself: one OS thread per `--threads`, each optionally pinned to
//! a core and driving its share of the connections on its own tokio
//! current-thread runtime. Each connection loops — closed (next request when
//! the answer is complete) or open (next request at its intended time) —
//! until the run's end or the request budget. Threads share only the
//! read-only plan, the start instant, the request budget counter and, once a
//! second, a progress snapshot; statistics stay per thread until merged at
//! the end.
//!
//! # Invariants
//! - Every loop is bounded by the run's end instant (warm-up + duration)
//!   and each request by `--timeout`; `--requests` bounds the count.
//! - A thread that fails to set up still passes the start gate, and a
//!   thread that cannot be spawned cancels it, so no thread waits forever.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::histogram::Latencies;
use super::http::{Connection, ExchangeError};
use super::pace::{tighten_timer_slack, Pacer, SendLag};
use super::payload::{BodyGen, PayloadPool};
use super::report::ErrorCounts;
use super::schedule::Schedule;
use super::target::Target;
use super::LoadError;
use crate::hash::body_hash;

/// Pause after a failed connect in closed loop, so a dead target is not
/// hammered in a tight loop.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How often a thread publishes its progress snapshot.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Highest status code counted one by one.
const MAX_STATUS: usize = 999;
/// Agent identity sent with every request.
pub const AGENT_VERSION: &str = "7.60.0";

/// Read-only description of the run, shared by all threads.
pub(crate) struct Plan {
    pub targets: Vec<Target>,
    pub pool: Arc<PayloadPool>,
    pub connections: usize,
    pub threads: usize,
    pub pin: bool,
    pub rate: Option<f64>,
    /// Open loop: busy-wait this long before each send (see `LoadOptions::spin`).
    pub spin: Duration,
    /// Open loop: release on multiples of this (see `LoadOptions::quantum`).
    pub quantum: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub requests: Option<u64>,
    pub collect_hashes: bool,
    /// With `collect_hashes`: every body answered 2xx, shared by the threads.
    pub ok_filter: Option<Arc<crate::digest::SentFilter>>,
    pub api_key: String,
    /// `LoadOptions::seed`: mixed into every connection's generator.
    pub seed: u64,
    /// Measured requests claimed so far (for `requests`).
    pub claimed: AtomicU64,
}

impl Plan {
    /// Request head for `target` up to (not including) Content-Length.
    fn head_prefix(&self, target: &Target) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: datadog-agent/{AGENT_VERSION}\r\nDD-API-KEY: {}\r\n\
             DD-Agent-Version: {AGENT_VERSION}\r\nContent-Type: {}\r\n",
            target.path,
            target.authority,
            self.api_key,
            self.pool.kind().content_type()
        );
        if let Some(encoding) = self.pool.compression().content_encoding() {
            head.push_str(&format!("Content-Encoding: {encoding}\r\n"));
        }
        head.into_bytes()
    }
}

/// What one thread measured.
pub(crate) struct ThreadStats {
    pub latencies: Latencies,
    /// Open loop: how late the client itself sent (see [`SendLag`]).
    pub send_lag: SendLag,
    pub requests: u64,
    pub responses: u64,
    pub status: Vec<u64>,
    pub errors: ErrorCounts,
    pub connections_opened: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Digest of the bodies answered 2xx (fixed size, `--verify` only).
    pub ok_digest: Option<Box<crate::digest::BodyDigest>>,
    /// Bodies sent without a 2xx answer, at most `verify::MAX_UNCONFIRMED`.
    pub unconfirmed_hashes: Vec<u64>,
    pub unconfirmed_truncated: bool,
    /// When the last measured request finished.
    pub last_done: Option<Instant>,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            latencies: Latencies::new(),
            send_lag: SendLag::default(),
            requests: 0,
            responses: 0,
            status: vec![0; MAX_STATUS + 1],
            errors: ErrorCounts::default(),
            connections_opened: 0,
            sent_bytes: 0,
            received_bytes: 0,
            ok_digest: None,
            unconfirmed_hashes: Vec::new(),
            unconfirmed_truncated: false,
            last_done: None,
        }
    }
}

impl ThreadStats {
    pub fn merge(&mut self, other: ThreadStats) {
        self.latencies.merge(&other.latencies);
        self.send_lag.merge(&other.send_lag);
        self.requests += other.requests;
        self.responses += other.responses;
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        self.errors.add(&other.errors);
        self.connections_opened += other.connections_opened;
        self.sent_bytes += other.sent_bytes;
        self.received_bytes += other.received_bytes;
        match (&mut self.ok_digest, other.ok_digest) {
            (Some(mine), Some(theirs)) => mine.merge(&theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        for h in other.unconfirmed_hashes {
            self.keep_unconfirmed(h);
        }
        self.unconfirmed_truncated |= other.unconfirmed_truncated;
        self.last_done = self.last_done.max(other.last_done);
    }

    fn keep_unconfirmed(&mut self, hash: u64) {
        if self.unconfirmed_hashes.len() < super::verify::MAX_UNCONFIRMED {
            self.unconfirmed_hashes.push(hash);
        } else {
            self.unconfirmed_truncated = true;
        }
    }
}

/// A thread's progress, read once a second by the main thread.
#[derive(Default)]
pub(crate) struct Live {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub latencies: Mutex<Option<Latencies>>,
}

/// Start instant shared by all threads, set once every thread is ready.
pub(crate) struct StartGate {
    threads: usize,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    arrived: usize,
    start: Option<Instant>,
    cancelled: bool,
}

impl StartGate {
    pub fn new(threads: usize) -> StartGate {
        StartGate { threads, state: Mutex::new(GateState::default()), changed: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for every thread; all get the same start instant. `None` when
    /// the run was cancelled before every thread arrived.
    fn wait(&self) -> Option<Instant> {
        let mut state = self.lock();
        state.arrived += 1;
        if state.arrived == self.threads {
            state.start = Some(Instant::now());
            self.changed.notify_all();
        }
        while state.start.is_none() && !state.cancelled {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.start
    }

    /// Releases the waiting threads without a start (a thread could not be
    /// spawned).
    pub fn cancel(&self) {
        self.lock().cancelled = true;
        self.changed.notify_all();
    }

    /// The start instant, once every thread arrived.
    pub fn started(&self) -> Option<Instant> {
        self.lock().start
    }
}

/// Body of one load thread: sets up, waits for the others, runs its
/// connections to the end and returns what it measured.
pub(crate) fn thread_main(
    plan: Arc<Plan>,
    thread: usize,
    core: Option<core_affinity::CoreId>,
    gate: Arc<StartGate>,
    live: Arc<Live>,
) -> Result<ThreadStats, LoadError> {
    if let Some(core) = core {
        // Best effort: a refused pin leaves the thread unpinned.
        core_affinity::set_for_current(core);
    }
    // Open-loop sends wake on timerfds: no timer slack batching them late.
    tighten_timer_slack();
    let indexes: Vec<usize> = (thread..plan.connections).step_by(plan.threads).collect();
    let setup = (|| -> Result<_, LoadError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(LoadError::Runtime)?;
        let gens = indexes
            .iter()
            .map(|&i| BodyGen::new(Arc::clone(&plan.pool), plan_seed(plan.seed, i)))
            .collect::<Result<Vec<_>, _>>()?;
        let stats = Rc::new(RefCell::new(ThreadStats::default()));
        // Connect up front so the first requests do not pay for it.
        let conns = runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (slot, &i) in indexes.iter().enumerate() {
                let addr = plan.targets[i % plan.targets.len()].addr;
                let timeout = plan.timeout;
                set.spawn(async move { (slot, tokio::time::timeout(timeout, Connection::open(addr)).await) });
            }
            let mut conns: Vec<Option<Connection>> = indexes.iter().map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                if let Ok((slot, Ok(Ok(conn)))) = joined {
                    conns[slot] = Some(conn);
                }
            }
            conns
        });
        stats.borrow_mut().connections_opened = conns.iter().filter(|c| c.is_some()).count() as u64;
        Ok((runtime, gens, conns, stats))
    })();
    let start = gate.wait();
    let (runtime, gens, conns, stats) = setup?;
    let Some(start) = start else { return Err(LoadError::Cancelled) };

    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(async {
        let mut tasks = Vec::with_capacity(indexes.len());
        for ((&index, gen), conn) in indexes.iter().zip(gens).zip(conns) {
            let driver = Driver { plan: Arc::clone(&plan), stats: Rc::clone(&stats), index, gen, conn, start };
            tasks.push(tokio::task::spawn_local(driver.run()));
        }
        let ticker = tokio::task::spawn_local(publish_progress(Rc::clone(&stats), Arc::clone(&live)));
        for task in tasks {
            let _ = task.await;
        }
        ticker.abort();
    }));
    drop(local);
    let stats =
        Rc::try_unwrap(stats).map(RefCell::into_inner).unwrap_or_else(|rc| std::mem::take(&mut *rc.borrow_mut()));
    Ok(stats)
}

/// Seed of connection `index`'s generator (body sizes, template choice),
/// from the run's `seed`; seed 0 gives the seeds used before `--seed`
/// existed.
fn plan_seed(seed: u64, index: usize) -> u64 {
    0xC0FF_EE00_0000_0000 ^ index as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

async fn publish_progress(stats: Rc<RefCell<ThreadStats>>, live: Arc<Live>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = {
            let stats = stats.borrow();
            live.requests.store(stats.requests, Ordering::Relaxed);
            live.errors.store(stats.errors.total, Ordering::Relaxed);
            stats.latencies.clone()
        };
        *live.latencies.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }
}

/// One connection's request loop.
struct Driver {
    plan: Arc<Plan>,
    stats: Rc<RefCell<ThreadStats>>,
    index: usize,
    gen: BodyGen,
    conn: Option<Connection>,
    start: Instant,
}

/// How one request ended.
enum Outcome {
    Answer { status: u16, bytes: u64 },
    Failed(ExchangeError),
    TimedOut,
}

impl Driver {
    async fn run(mut self) {
        let plan = Arc::clone(&self.plan);
        let target = &plan.targets[self.index % plan.targets.len()];
        let prefix = plan.head_prefix(target);
        let mut head = Vec::with_capacity(prefix.len() + 32);
        let warm_end = self.start + plan.warmup;
        let end = warm_end + plan.duration;
        let mut schedule = plan.rate.map(|rate| Schedule::new(self.start, rate, self.index, plan.connections));
        let pacer = match schedule.as_ref().map(|_| Pacer::new()) {
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => {
                self.stats.borrow_mut().errors.other += 1;
                return;
            }
            None => None,
        };
        let mut sequence = 0u64;
        // When this connection became free: the previous answer (or the start).
        let mut free_at = self.start;
        loop {
            // Open loop: the intended time; the request is built before the
            // wait, so that it leaves at that time, not after its compression.
            let intended = match &mut schedule {
                Some(schedule) => {
                    let mut at = schedule.next_send();
                    if at >= end {
                        break;
                    }
                    if !plan.quantum.is_zero() {
                        at = quantize(self.start, at, plan.quantum);
                    }
                    at
                }
                None => {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    now
                }
            };
            let measured = intended >= warm_end;
            if measured {
                if let Some(limit) = plan.requests {
                    if plan.claimed.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
            }
            // Unique across the run: 24 bits of connection, 40 of sequence.
            let seq = ((self.index as u64) << 40) | sequence;
            sequence += 1;
            let body = match self.gen.next(seq) {
                Ok(body) => body,
                Err(_) => {
                    self.stats.borrow_mut().errors.other += 1;
                    break;
                }
            };
            head.clear();
            head.extend_from_slice(&prefix);
            let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
            let hash = if plan.collect_hashes { body_hash(body) } else { 0 };
            let request_bytes = (head.len() + body.len()) as u64;
            if let Some(pacer) = &pacer {
                if pacer.sleep_until(intended, plan.spin).await.is_err() {
                    tokio::time::sleep_until(intended.into()).await;
                }
                if measured {
                    // The client's own lateness: from when the request could
                    // leave (intended, or the previous answer if later) to now.
                    let lag = Instant::now().saturating_duration_since(intended.max(free_at));
                    self.stats.borrow_mut().send_lag.record(lag);
                }
            }

            let slot = &mut self.conn;
            let stats = &self.stats;
            let outcome = match tokio::time::timeout(plan.timeout, async {
                if slot.is_none() {
                    let conn = Connection::open(target.addr).await?;
                    stats.borrow_mut().connections_opened += 1;
                    *slot = Some(conn);
                }
                let conn = slot.as_mut().expect("opened above");
                conn.exchange(&head, body).await
            })
            .await
            {
                Ok(Ok(answer)) => {
                    if !answer.reusable {
                        self.conn = None;
                    }
                    Outcome::Answer { status: answer.status, bytes: answer.bytes }
                }
                Ok(Err(e)) => {
                    self.conn = None;
                    Outcome::Failed(e)
                }
                Err(_) => {
                    self.conn = None;
                    Outcome::TimedOut
                }
            };
            let done = Instant::now();
            free_at = done;
            let connect_failed = matches!(outcome, Outcome::Failed(ExchangeError::Connect(_)));
            if plan.collect_hashes {
                // Warm-up bodies reach the mock too: they are compared like
                // the others (else the mock's copies read as corrupted).
                let ok = matches!(outcome, Outcome::Answer { status, .. } if (200..300).contains(&status));
                self.collect_hash(ok, hash);
            }
            if measured {
                self.record(outcome, intended, done, request_bytes);
            }
            if connect_failed && schedule.is_none() {
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
            }
        }
    }

    /// With `--verify`: the body's hash, among the 2xx ones or the
    /// unconfirmed ones.
    fn collect_hash(&self, ok: bool, hash: u64) {
        let mut stats = self.stats.borrow_mut();
        if ok {
            stats.ok_digest.get_or_insert_with(Default::default).insert(hash);
            if let Some(filter) = &self.plan.ok_filter {
                filter.insert(hash);
            }
        } else {
            stats.keep_unconfirmed(hash);
        }
    }

    fn record(&self, outcome: Outcome, intended: Instant, done: Instant, request_bytes: u64) {
        let mut guard = self.stats.borrow_mut();
        let stats = &mut *guard;
        stats.requests += 1;
        stats.last_done = Some(done);
        match outcome {
            Outcome::Answer { status, bytes } => {
                stats.responses += 1;
                stats.sent_bytes += request_bytes;
                stats.received_bytes += bytes;
                stats.status[usize::from(status).min(MAX_STATUS)] += 1;
                stats.latencies.record(done.saturating_duration_since(intended));
            }
            Outcome::Failed(e) => {
                stats.errors.total += 1;
                match e {
                    ExchangeError::Connect(_) => stats.errors.connect += 1,
                    ExchangeError::Reset(_) => {
                        stats.errors.reset += 1;
                        stats.sent_bytes += request_bytes;
                    }
                    ExchangeError::Malformed(_) | ExchangeError::Io(_) => stats.errors.other += 1,
                }
            }
            Outcome::TimedOut => {
                stats.errors.total += 1;
                stats.errors.timeout += 1;
            }
        }
    }
}

/// `at` moved up to the next multiple of `quantum` after `start`.
fn quantize(start: Instant, at: Instant, quantum: Duration) -> Instant {
    let q = quantum.as_nanos().max(1);
    let since = at.saturating_duration_since(start).as_nanos();
    let ticks = since.div_ceil(q);
    start + Duration::from_nanos((ticks * q) as u64)
}

/// The cores to pin threads to, one per thread (round-robin), or none.
pub(crate) fn cores_for(threads: usize, pin: bool) -> Vec<Option<core_affinity::CoreId>> {
    let cores = if pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
    (0..threads).map(|t| if cores.is_empty() { None } else { Some(cores[t % cores.len()]) }).collect()
}

/// Prints one progress line on stderr (`\r`, no newline).
pub(crate) fn print_progress(lives: &[Arc<Live>], since: Instant, last: &mut (Instant, u64)) {
    let requests: u64 = lives.iter().map(|l| l.requests.load(Ordering::Relaxed)).sum();
    let errors: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
    let mut merged = Latencies::new();
    for live in lives {
        if let Some(l) = live.latencies.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            merged.merge(l);
        }
    }
    let now = Instant::now();
    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
    let rate = (requests.saturating_sub(last.1)) as f64 / dt;
    *last = (now, requests);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{:>5.1}s] {:>9.0} req/s  {:>10} requests  {:>6} errors  p99 {:>9.3}ms   ",
        now.duration_since(since).as_secs_f64(),
        rate,
        requests,
        errors,
        merged.percentile_us(99.0) as f64 / 1000.0
    );
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_moves_up_to_the_next_tick() {
        let start = Instant::now();
        let q = Duration::from_millis(1);
        let at = |us: u64| start + Duration::from_micros(us);
        assert_eq!(quantize(start, at(0), q), at(0));
        assert_eq!(quantize(start, at(1), q), at(1000));
        assert_eq!(quantize(start, at(999), q), at(1000));
        assert_eq!(quantize(start, at(1000), q), at(1000));
        assert_eq!(quantize(start, at(5200), q), at(6000));
    }
}
