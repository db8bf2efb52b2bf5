//! Whether each upstream address is up: active checks from the control
//! thread (TCP connect + FIPS TLS handshake every `health.interval`; an
//! address that is down is checked sooner, from `health.down_interval`
//! doubling up to `health.interval`), passive marking from the data path (a
//! failed connect or handshake counts as a failed check at once), and
//! revival from the data path (a request that connects to a down address
//! while its host has none up, "panic mode", brings it back at once).
//!
//! State lives in atomics on each [`Endpoint`]; workers read it without
//! locks. Whoever makes an address change state (a worker or the checker)
//! logs the one transition line, decided by a compare-and-swap, and counts
//! it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::{open_session, Dial, Directory, OpenError};
use crate::config::HealthConfig;
use crate::io::epoll::Epoll;

/// One address of one upstream host, with its health.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    up: AtomicBool,
    /// Consecutive failures (checks and live connects) while up.
    fails: AtomicU32,
    /// Consecutive successful checks while down.
    oks: AtomicU32,
    /// No longer in the host's DNS answer: its pooled sessions are not reused.
    retired: AtomicBool,
    /// When the next active check is due, in ms of the checker's clock
    /// ([`Checker`]); 0: at the next tick.
    next_check_ms: AtomicU64,
    /// Active checks failed in a row while down: the backoff's exponent.
    down_checks: AtomicU32,
    /// Transitions so far: to down, to up (for `/metrics`).
    pub downs: AtomicU64,
    pub ups: AtomicU64,
}

/// A change of state to log: the caller counts the host's addresses up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

impl Endpoint {
    /// New addresses start up: traffic flows at once, and a dead one is
    /// taken down by its first failed connects.
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            up: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            down_checks: AtomicU32::new(0),
            downs: AtomicU64::new(0),
            ups: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether a pooled session to this address may carry another request.
    pub fn is_usable(&self) -> bool {
        self.is_up() && !self.retired.load(Ordering::Relaxed)
    }

    /// The address left the host's DNS answer.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// A failed check or connect. Returns `Down` for the one caller whose
    /// failure took the address down.
    pub fn failed(&self, policy: &HealthConfig) -> Option<Transition> {
        if !policy.enabled {
            return None;
        }
        self.oks.store(0, Ordering::Relaxed);
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= policy.fall && self.up.compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.downs.fetch_add(1, Ordering::Relaxed);
            // Check it soon: the backoff starts at health.down_interval.
            self.down_checks.store(0, Ordering::Relaxed);
            self.next_check_ms.store(0, Ordering::Relaxed);
            return Some(Transition::Down);
        }
        None
    }

    /// A request connected to this address while it was down (panic mode):
    /// it is up again at once. Returns `Up` for the one caller that revived it.
    pub fn revive(&self) -> Option<Transition> {
        self.fails.store(0, Ordering::Relaxed);
        self.oks.store(0, Ordering::Relaxed);
        if self.up.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.ups.fetch_add(1, Ordering::Relaxed);
            self.down_checks.store(0, Ordering::Relaxed);
            return Some(Transition::Up);
        }
        None
    }

    /// When the checker should look at this address next, after a check that
    /// ended at `now_ms`: `interval` while up; while down,
    /// `down_interval · 2^(failed checks)`, at most `interval`.
    fn schedule_next(&self, now_ms: u64, policy: &HealthConfig) {
        let interval = policy.interval.as_millis() as u64;
        let gap = if self.is_up() {
            interval
        } else {
            let k = self.down_checks.fetch_add(1, Ordering::Relaxed).min(20);
            (policy.down_interval.as_millis() as u64).saturating_mul(1 << k).min(interval)
        };
        self.next_check_ms.store(now_ms + gap.max(1), Ordering::Relaxed);
    }

    fn check_due(&self, now_ms: u64) -> bool {
        self.next_check_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// A successful connect from the data path: clears the failure count
    /// (written only when there is one, to keep the hot path read-only).
    pub fn connected(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A successful active check. Returns `Up` when it brought the address back.
    pub fn check_passed(&self, policy: &HealthConfig) -> Option<Transition> {
        self.fails.store(0, Ordering::Relaxed);
        if self.is_up() {
            return None;
        }
        let oks = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
        if oks >= policy.rise && self.up.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.oks.store(0, Ordering::Relaxed);
            self.ups.fetch_add(1, Ordering::Relaxed);
            self.down_checks.store(0, Ordering::Relaxed);
            return Some(Transition::Up);
        }
        None
    }
}

/// The reason for a failed connect or handshake, without the address (the
/// transition line names it already).
pub fn reason(e: &OpenError) -> String {
    match e {
        OpenError::NoAddress { why, .. } => format!("no address: {why}"),
        OpenError::Connect { source, .. } => format!("connect failed: {source}"),
        OpenError::LocalResources { source, .. } => format!("no socket for the connect (the relay's side): {source}"),
        OpenError::ConnectTimeout { after, .. } => {
            format!("connect timeout after {}", humantime::format_duration(*after))
        }
        OpenError::Tls { source, .. } => format!("TLS handshake failed: {source}"),
        OpenError::TlsTimeout { after, .. } => {
            format!("TLS handshake timeout after {}", humantime::format_duration(*after))
        }
        OpenError::Proxy { source, .. } => source.to_string(),
        OpenError::TunnelTls { source, target, .. } => {
            format!("TLS handshake with {target} through the proxy failed: {source}")
        }
        OpenError::TunnelTlsTimeout { after, target, .. } => {
            format!(
                "TLS handshake with {target} through the proxy timed out after {}",
                humantime::format_duration(*after)
            )
        }
    }
}

/// Logs one transition: `upstream HOST ADDR is DOWN: WHY (K of N addresses up)`.
pub fn log_transition(directory: &Directory, id: usize, addr: SocketAddr, t: Transition, why: &str) {
    let resolved = directory.get(id);
    let up = resolved.endpoints.iter().filter(|e| e.is_up()).count();
    let n = resolved.endpoints.len();
    let host = directory.host(id);
    match t {
        Transition::Down => tracing::warn!(
            upstream = host,
            %addr,
            "upstream {host} {addr} is DOWN: {why} ({up} of {n} addresses up)"
        ),
        Transition::Up => {
            tracing::info!(upstream = host, %addr, "upstream {host} {addr} is UP: {why} ({up} of {n} addresses up)")
        }
    }
}

/// An up address whose check is due this soon is checked with those due
/// now: the addresses' checks fall together, so that the checker wakes
/// about once per `health.interval`, not once per address.
const BATCH_SLACK_MS: u64 = 1000;

/// The active checker's clock: ms since it started.
pub struct Checker {
    start: Instant,
}

impl Default for Checker {
    fn default() -> Self {
        Checker { start: Instant::now() }
    }
}

impl Checker {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs forever: checks the addresses that are due (all at once), so an
    /// up address is checked every `health.interval` and a down one from
    /// `health.down_interval` on, doubling; in between it sleeps until the
    /// next check is due, or until [`Directory::health_wake`] says one came
    /// sooner.
    pub async fn run(self, directory: Arc<Directory>, tls: Arc<ClientConfig>, server_names: Vec<String>) {
        loop {
            let woken = directory.health_wake.notified();
            tokio::pin!(woken);
            // Armed before the check: a reschedule during it is not missed.
            woken.as_mut().enable();
            self.check_due(&directory, &tls, &server_names).await;
            match self.next_due(&directory, server_names.len()) {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(self.now_ms()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// When the next check is due (checker clock), if any address has one.
    fn next_due(&self, directory: &Directory, hosts: usize) -> Option<u64> {
        (0..hosts.min(directory.len()))
            .flat_map(|id| {
                directory.get(id).endpoints.iter().map(|e| e.next_check_ms.load(Ordering::Relaxed)).collect::<Vec<_>>()
            })
            .min()
    }

    /// Starts a check of every address whose check is due, each as its own
    /// task: a slow check (a blackholed address takes up to twice
    /// `health.timeout`) delays no other. An address has at most one check
    /// in flight; if a check task ends without rescheduling (it panicked),
    /// the fallback time set here brings the address back within `interval`.
    pub async fn check_due(&self, directory: &Arc<Directory>, tls: &Arc<ClientConfig>, server_names: &[String]) {
        let policy = directory.health;
        let now = self.now_ms();
        for (id, server_name) in server_names.iter().enumerate().take(directory.len()) {
            let due = |e: &&Arc<Endpoint>| e.check_due(now) || (e.is_up() && e.check_due(now + BATCH_SLACK_MS));
            for endpoint in directory.get(id).endpoints.iter().filter(due).cloned() {
                // Not due again before this check reschedules it, or, failing
                // that, one interval from now.
                endpoint.next_check_ms.store(now + policy.interval.as_millis() as u64, Ordering::Relaxed);
                let (tls, name, directory, start) = (tls.clone(), server_name.clone(), directory.clone(), self.start);
                tokio::task::spawn_local(async move {
                    let result = check_one(directory.dial(id, endpoint.addr), tls, &name, policy.timeout).await;
                    match result {
                        Ok(()) => {
                            if let Some(t) = endpoint.check_passed(&policy) {
                                let why = format!("{} consecutive checks passed", policy.rise);
                                log_transition(&directory, id, endpoint.addr, t, &why);
                            }
                        }
                        // The relay out of descriptors says nothing of the
                        // address: not counted, checked again next interval.
                        Err(e) if e.is_local() => {
                            tracing::warn!(upstream = directory.host(id), addr = %endpoint.addr, side = "relay", error = %e, "health check could not run: the relay is out of descriptors; the address keeps its state");
                        }
                        Err(e) => {
                            let why = reason(&e);
                            tracing::debug!(upstream = directory.host(id), addr = %endpoint.addr, error = %why, "health check failed");
                            if let Some(t) = endpoint.failed(&policy) {
                                log_transition(&directory, id, endpoint.addr, t, &why);
                            }
                        }
                    }
                    endpoint.schedule_next(start.elapsed().as_millis() as u64, &policy);
                    directory.health_wake.notify_one();
                });
            }
        }
    }
}

/// TCP connect (through the proxy's tunnel when the host goes through it)
/// + FIPS TLS handshake (certificate verified) to one address, then a clean close.
pub async fn check_one(
    dial: Dial<'_>,
    tls: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<(), OpenError> {
    let session = open_session::<Epoll>(dial, tls, server_name, timeout).await?;
    let _ = tokio::time::timeout(timeout, session.session.close()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rise: u32, fall: u32) -> HealthConfig {
        HealthConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            down_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            rise,
            fall,
        }
    }

    #[test]
    fn down_addresses_are_checked_sooner_with_backoff() {
        let p = policy(2, 1);
        let e = Endpoint::new("10.0.0.1:443".parse().unwrap());
        e.schedule_next(1_000, &p);
        assert_eq!(e.next_check_ms.load(Ordering::Relaxed), 11_000, "up: every interval");
        assert_eq!(e.failed(&p), Some(Transition::Down));
        assert!(e.check_due(1_001), "going down makes it due at once");
        let mut gaps = Vec::new();
        let mut now = 2_000;
        for _ in 0..7 {
            e.schedule_next(now, &p);
            let next = e.next_check_ms.load(Ordering::Relaxed);
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps, [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        // Revived by a request: up, counted once, backoff reset.
        assert_eq!(e.revive(), Some(Transition::Up));
        assert_eq!(e.revive(), None);
        assert_eq!((e.downs.load(Ordering::Relaxed), e.ups.load(Ordering::Relaxed)), (1, 1));
        assert_eq!(e.failed(&p), Some(Transition::Down));
        e.schedule_next(0, &p);
        assert_eq!(e.next_check_ms.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_checks() {
        let p = policy(2, 3);
        let e = Endpoint::new("10.0.0.1:443".parse().unwrap());
        assert!(e.is_up());
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.failed(&p), Some(Transition::Down));
        assert!(!e.is_up());
        // Further failures log nothing more.
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.check_passed(&p), None);
        // A failure in between restarts the rise count.
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.check_passed(&p), None);
        assert_eq!(e.check_passed(&p), Some(Transition::Up));
        assert!(e.is_up());
        // Back up, the failure count starts from zero.
        assert_eq!(e.failed(&p), None);
        e.connected();
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.failed(&p), None);
        assert_eq!(e.failed(&p), Some(Transition::Down));
    }

    #[test]
    fn disabled_never_marks_down() {
        let mut p = policy(2, 1);
        p.enabled = false;
        let e = Endpoint::new("10.0.0.1:443".parse().unwrap());
        for _ in 0..10 {
            assert_eq!(e.failed(&p), None);
        }
        assert!(e.is_up());
    }

    #[test]
    fn only_one_of_many_racing_failures_logs_the_transition() {
        let p = policy(2, 3);
        let e = Arc::new(Endpoint::new("10.0.0.1:443".parse().unwrap()));
        let downs: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let e = e.clone();
                    s.spawn(move || (0..100).filter(|_| e.failed(&p) == Some(Transition::Down)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(downs, 1);
    }
}
