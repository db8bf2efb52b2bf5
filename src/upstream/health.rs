//! Whether each upstream address is up: active checks from the control
//! thread (TCP connect + FIPS TLS handshake every `health.interval`) and
//! passive marking from the data path (a failed connect or handshake counts
//! as a failed check at once).
//!
//! State lives in atomics on each [`Endpoint`]; workers read it without
//! locks. Whoever makes an address change state (a worker or the checker)
//! logs the one transition line, decided by a compare-and-swap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::{open_session, Directory, OpenError};
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
            return Some(Transition::Down);
        }
        None
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
        OpenError::ConnectTimeout { after, .. } => {
            format!("connect timeout after {}", humantime::format_duration(*after))
        }
        OpenError::Tls { source, .. } => format!("TLS handshake failed: {source}"),
        OpenError::TlsTimeout { after, .. } => {
            format!("TLS handshake timeout after {}", humantime::format_duration(*after))
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

/// One round of active checks over every address of every host, all at
/// once. Runs on the control thread inside a `LocalSet`.
pub async fn check_all(directory: &Arc<Directory>, tls: &Arc<ClientConfig>, server_names: &[String]) {
    let policy = directory.health;
    let mut checks = tokio::task::JoinSet::new();
    for (id, server_name) in server_names.iter().enumerate().take(directory.len()) {
        for endpoint in directory.get(id).endpoints.iter().cloned() {
            let (tls, name) = (tls.clone(), server_name.clone());
            checks.spawn_local(async move {
                let result = check_one(endpoint.addr, tls, &name, policy.timeout).await;
                (id, endpoint, result)
            });
        }
    }
    while let Some(done) = checks.join_next().await {
        let Ok((id, endpoint, result)) = done else { continue };
        match result {
            Ok(()) => {
                if let Some(t) = endpoint.check_passed(&policy) {
                    let why = format!("{} consecutive checks passed", policy.rise);
                    log_transition(directory, id, endpoint.addr, t, &why);
                }
            }
            Err(e) => {
                let why = reason(&e);
                tracing::debug!(upstream = directory.host(id), addr = %endpoint.addr, error = %why, "health check failed");
                if let Some(t) = endpoint.failed(&policy) {
                    log_transition(directory, id, endpoint.addr, t, &why);
                }
            }
        }
    }
}

/// TCP connect + FIPS TLS handshake (certificate verified) to one address,
/// then a clean close.
pub async fn check_one(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<(), OpenError> {
    let session = open_session::<Epoll>(addr, tls, server_name, timeout).await?;
    let _ = tokio::time::timeout(timeout, session.session.close()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rise: u32, fall: u32) -> HealthConfig {
        HealthConfig { enabled: true, interval: Duration::from_secs(10), timeout: Duration::from_secs(5), rise, fall }
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
