//! Start-up, in the order `run` calls it: take what a previous process
//! handed over, admit the FIPS module and the config ([`preflight`]: trust
//! store, run.user, I/O backend, admin token file, the proxy's credentials,
//! worker count; `check-config` runs it too), bind the ports or adopt the
//! inherited listeners, log the start, read the admin token, build the
//! state the workers share and one TLS config per worker, then drop root.
//!
//! Everything here runs on the one thread the process has at start, while
//! it may still be root. It must never start a thread or a runtime (the
//! privilege drop changes only the calling thread), and nothing may be read
//! or bound as root after [`drop_privileges`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;

use super::{handover, privileges, StartError, COMMIT, VERSION};
use crate::admin::{self, AdminAccess, AdminToken, TokenError, TokenSource};
use crate::config::{self, Config, IoChoice, Source, UpstreamProtocol};
use crate::crypto::{self, Admission, CryptoError, FipsModule, TrustSource};
use crate::io::{epoll::Epoll, uring::Uring, Backend};
use crate::listener::{self, BindError, WorkerListeners};
use crate::metrics::StatsHub;
use crate::route::RouteTable;
use crate::status::StatusInfo;
use crate::upstream::proxy::Proxy;
use crate::upstream::Directory;
use crate::worker::Adopted;

/// What the checks before binding found and decided.
pub struct Admitted {
    pub trust: TrustSource,
    pub fips_module: FipsModule,
    pub admission: Admission,
    /// [`Epoll::NAME`] or [`Uring::NAME`].
    pub backend: &'static str,
    /// CPUs this process may run on, to pin workers to.
    pub cpus: Vec<core_affinity::CoreId>,
    pub workers: usize,
    /// The egress proxy, its credentials read (and its CA file, for https://).
    pub proxy: Option<Arc<Proxy>>,
}

/// The listening sockets, per worker, and what was taken over.
pub(super) struct Bound {
    pub listeners: Vec<WorkerListeners>,
    /// One descriptor per socket, kept to hand over at the next restart in place.
    pub sockets: Vec<OwnedFd>,
    /// Idle Agent connections handed over by the previous process, per worker.
    pub adopted: Vec<Adopted>,
    /// (listeners, connections) taken over from a previous process.
    pub took_over: (usize, usize),
}

/// The read-mostly state the workers and the control thread share.
#[derive(Clone)]
pub(super) struct Shared {
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub directory: Arc<Directory>,
    pub hub: Arc<StatsHub>,
    pub info: Arc<StatusInfo>,
}

/// The TLS configs, built while the CA file can still be read.
pub(super) struct WorkerTls {
    pub per_worker: Vec<Arc<ClientConfig>>,
    /// For the health checks on the control thread.
    pub health: Arc<ClientConfig>,
}

/// Warns when an HAProxy-based FIPS proxy's config is still installed.
pub(super) fn notice_haproxy_config() {
    if let Some(line) = config::haproxy_config_notice(Path::new(config::HAPROXY_CONFIG_PATH)) {
        tracing::warn!(path = config::HAPROXY_CONFIG_PATH, "{line}");
    }
}

/// What a previous process handed over (restart in place); empty otherwise.
/// Call before any other descriptor is opened.
pub(super) fn take_inherited() -> handover::Inherited {
    let (inherited, problems) = handover::take_inherited().unwrap_or_default();
    for p in problems {
        tracing::warn!(problem = %p, "ignoring part of what the previous process handed over");
    }
    inherited
}

/// Every check `run` makes before binding anything, in one place so that
/// `check-config` (the unit's `ExecStartPre`) refuses what `run` would: the
/// FIPS checks and the module's CMVP status, the trust store (the CA file
/// read and parsed), run.user (when started as root), the I/O backend, the
/// admin token file (unless `token_inherited`: a restart in place hands it
/// over), and the egress proxy (its credentials and CA file read).
///
/// It reads files but never binds, creates or changes anything.
pub fn preflight(config: &Config, token_inherited: bool) -> Result<Admitted, StartError> {
    let trust = trust_of(config);
    crypto::client_config(&trust)?;
    let fips_module = crypto::linked_module();
    let admission = crypto::admit(&fips_module, config.allow_unvalidated_module)?;
    if let (Some(user), 0) = (&config.run_user, unsafe { libc::geteuid() }) {
        privileges::lookup(user)?;
    }
    let backend = choose_backend(config.io)?;
    if config.admin_enabled && !token_inherited {
        admin::check_token_file(&config.admin_token_file)?;
    }
    let proxy = match &config.proxy {
        Some(p) => Some(Arc::new(Proxy::from_config(p)?)),
        None => None,
    };
    let cpus = allowed_cpus();
    let workers = worker_count(config.threads, &cpus);
    Ok(Admitted { trust, fips_module, admission, backend, cpus, workers, proxy })
}

/// `workers.threads`, or with 0 one per CPU this process may use, capped by
/// a cgroup CPU quota (a container's `resources.limits.cpu`), rounded up.
fn worker_count(threads: usize, cpus: &[core_affinity::CoreId]) -> usize {
    if threads > 0 {
        return threads;
    }
    let quota = cgroup_cpu_quota(Path::new("/sys/fs/cgroup"));
    cpus.len().max(1).min(quota.unwrap_or(usize::MAX))
}

/// The trust store the config names: its CA file, or the system's.
pub(super) fn trust_of(config: &Config) -> TrustSource {
    match &config.ca_file {
        Some(p) => TrustSource::CaFile(p.clone()),
        None => TrustSource::System,
    }
}

/// The backend the config asks for, after probing `uring`.
///
/// `auto` is the backend measured cheaper for Agent traffic: epoll today.
/// The hand-driven ring costs 0.88–0.95× epoll's CPU per request for 1 KiB
/// bodies but 1.09–1.12× for 64 KiB ones
/// (docs/performance-history.md#the-io_uring-loop-rebuilt-issue-11), and a busy
/// host's payloads are large; CPU per byte decides.
pub fn choose_backend(choice: IoChoice) -> Result<&'static str, StartError> {
    match choice {
        IoChoice::Epoll | IoChoice::Auto => Ok(Epoll::NAME),
        IoChoice::Uring => match crate::io::probe_uring() {
            Ok(()) => Ok(Uring::NAME),
            Err(e) => Err(StartError::UringUnavailable(e)),
        },
    }
}

/// The CPU quota of this process's cgroup in whole CPUs (rounded up), if it
/// has one: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
/// `root` is the cgroup mount (`/sys/fs/cgroup`; inside a container, its own).
pub fn cgroup_cpu_quota(root: &Path) -> Option<usize> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let (quota, period) = if let Some(max) = read("cpu.max") {
        let mut f = max.split_whitespace();
        (f.next()?.parse::<u64>().ok()?, f.next()?.parse::<u64>().ok()?)
    } else {
        let quota = read("cpu/cpu.cfs_quota_us").or_else(|| read("cpu,cpuacct/cpu.cfs_quota_us"))?;
        let period = read("cpu/cpu.cfs_period_us").or_else(|| read("cpu,cpuacct/cpu.cfs_period_us"))?;
        // -1: no quota.
        (quota.trim().parse::<u64>().ok()?, period.trim().parse::<u64>().ok()?)
    };
    if period == 0 {
        return None;
    }
    Some(quota.div_ceil(period).max(1) as usize)
}

/// CPUs this process may run on (taskset, systemd CPUAffinity, cpusets).
pub fn allowed_cpus() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Binds the listen range for every worker, adopting the listeners a
/// previous process handed over, and spreads its idle connections.
pub(super) fn bind(
    config: &Config,
    workers: usize,
    inherited: Vec<(SocketAddr, TcpListener)>,
    connections: Vec<TcpStream>,
) -> Result<Bound, BindError> {
    let took_over = (inherited.len(), connections.len());
    let listeners = if inherited.is_empty() {
        listener::bind_all(config.listen_address, config.port_range_start, workers)?
    } else {
        let (listeners, stray) =
            listener::bind_all_adopting(config.listen_address, config.port_range_start, workers, inherited)?;
        for addr in stray {
            tracing::warn!(%addr, "closing a listener handed over by the previous process: not in the new listen range");
        }
        listeners
    };
    let sockets = unique_sockets(&listeners);
    let adopted = adopt_connections(config, connections, workers);
    Ok(Bound { listeners, sockets, adopted, took_over })
}

/// One descriptor per listening socket (workers may share one), duplicated
/// close-on-exec, to hand over at a restart in place.
fn unique_sockets(listeners: &[WorkerListeners]) -> Vec<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (_, l) in listeners.iter().flatten() {
        let Ok(dup) = l.try_clone() else { continue };
        let file = std::fs::File::from(OwnedFd::from(dup));
        // Without an inode to tell sockets apart, keep it: a duplicate only
        // means one more listener for the same queue in the next process.
        let id = file.metadata().map(|m| m.ino()).ok();
        if id.is_none_or(|id| seen.insert(id)) {
            out.push(OwnedFd::from(file));
        }
    }
    out
}

/// Idle Agent connections handed over by the previous process, spread over
/// the workers; those on a port outside the new range are closed.
fn adopt_connections(config: &Config, conns: Vec<TcpStream>, workers: usize) -> Vec<Adopted> {
    let mut out: Vec<Adopted> = (0..workers).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        let offset = c.local_addr().ok().and_then(|a| {
            let p = a.port().checked_sub(config.port_range_start)?;
            let ip_ok = config.listen_address.is_unspecified() || a.ip() == config.listen_address;
            (ip_ok && p < config::PORT_COUNT).then_some(p)
        });
        match offset {
            Some(o) => out[i % workers].push((o, c)),
            None => {
                tracing::info!(local = ?c.local_addr().ok(), "closing a handed-over connection: its port is not in the new listen range")
            }
        }
    }
    out
}

/// The start log lines: what runs, and the warnings about settings that
/// weaken it.
pub(super) fn announce(config: &Config, source: &Source, admitted: &Admitted, took_over: (usize, usize)) {
    if !config.listen_address.is_loopback() {
        tracing::warn!(address = %config.listen_address, "listening on a non-loopback address: Agent traffic to the relay is plaintext, so FIPS compliance is not retained off-host; the status port's pages answer off-host too, the admin API does not (admin.allow_non_local = false)");
    }
    if config.admin_enabled && config.admin_allow_non_local {
        tracing::warn!(
            address = %config.listen_address,
            "admin.allow_non_local = true: the admin API (/admin/drain, /admin/log-level, /admin/reload) answers peers that are not on loopback, and its bearer token crosses the network in cleartext"
        );
    }
    tracing::info!(
        version = VERSION,
        commit = COMMIT,
        fips = %admitted.fips_module,
        io = admitted.backend,
        workers = admitted.workers,
        listen = %format!("{}:{}-{}", config.listen_address, config.port(0), config.port(config::PORT_COUNT - 1)),
        site = %config.site,
        config = %source,
        "fipsrelay starting"
    );
    if admitted.admission == Admission::AllowedUnvalidated {
        warn_unvalidated(&admitted.fips_module);
    }
    if took_over != (0, 0) {
        tracing::info!(
            listeners = took_over.0,
            connections = took_over.1,
            "restarted in place: took over the listeners and idle connections of the previous process"
        );
    }
    if !config.override_addrs.is_empty() {
        tracing::warn!(addrs = ?config.override_addrs, "upstream.override_addr is set: every product is sent there (test and demo setting)");
    }
}

/// Descriptors the control thread and the process itself may hold beside
/// the workers' (health checks, DNS, the log, rings, timers).
const FIXED_DESCRIPTORS: u64 = 64;

/// The descriptors the limits may need at once: per worker, its listeners,
/// the status port's reserve, and two per Agent connection (the Agent's
/// socket and an intake session); plus [`FIXED_DESCRIPTORS`].
pub fn descriptors_needed(max_connections: usize, workers: usize) -> u64 {
    let per_worker =
        u64::from(config::PORT_COUNT) + config::STATUS_CONNECTIONS_PER_WORKER as u64 + 2 * max_connections as u64;
    (workers as u64).saturating_mul(per_worker).saturating_add(FIXED_DESCRIPTORS)
}

/// The largest `limits.max_connections` that `nofile` descriptors hold.
pub fn max_connections_within(nofile: u64, workers: usize) -> u64 {
    let per_worker = nofile.saturating_sub(FIXED_DESCRIPTORS) / workers.max(1) as u64;
    per_worker.saturating_sub(u64::from(config::PORT_COUNT) + config::STATUS_CONNECTIONS_PER_WORKER as u64) / 2
}

/// Makes room for the limits in `RLIMIT_NOFILE`: raises the soft limit
/// toward the hard one as far as [`descriptors_needed`] asks, and warns,
/// with the figures and the fix, when even the hard limit is too low (then
/// connections beyond it fail with EMFILE: accepts back off, connects
/// answer 503 `local_resources`).
pub(super) fn fit_descriptors(config: &Config, workers: usize) {
    let need = descriptors_needed(config.max_connections, workers);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE; the descriptors the limits need are not checked");
        return;
    }
    let (soft, hard): (u64, u64) = (lim.rlim_cur, lim.rlim_max);
    if soft >= need {
        return;
    }
    let mut now = soft;
    let target = need.min(hard);
    if target > soft {
        let raised = libc::rlimit { rlim_cur: target as libc::rlim_t, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct it is given; only the soft limit changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = soft,
                to = target,
                hard,
                needed = need,
                "raised the RLIMIT_NOFILE soft limit toward the hard one for limits.max_connections"
            );
            now = target;
        } else {
            tracing::warn!(soft, hard, error = %std::io::Error::last_os_error(), "cannot raise the RLIMIT_NOFILE soft limit");
        }
    }
    if now < need {
        tracing::warn!(
            nofile = now,
            hard,
            needed = need,
            workers,
            max_connections = config.max_connections,
            fits = max_connections_within(now, workers),
            "RLIMIT_NOFILE is too low for the limits: {workers} workers × limits.max_connections = {} Agent connections (each with an intake session) need about {need} descriptors, and {now} are allowed; beyond, connections fail with EMFILE (Agent connections wait unaccepted, intake connects answer 503 local_resources). Raise LimitNOFILE (systemd) or ulimit -n to at least {need}, or lower limits.max_connections to {}",
            config.max_connections,
            max_connections_within(now, workers),
        );
    }
}

/// The warning for a module run through `crypto.allow_unvalidated_module`:
/// at start and every [`crypto::UNVALIDATED_WARNING_INTERVAL`].
pub(super) fn warn_unvalidated(module: &FipsModule) {
    tracing::warn!(
        fips = %module,
        status = module.status.name(),
        "the FIPS module is NOT CMVP-validated (crypto.allow_unvalidated_module = true): traffic is not FIPS 140-validated"
    );
}

/// The admin API's token, read (or created) while still privileged, before
/// run.user; or the one the previous process handed over.
///
/// With the default path, a token that cannot be created (a non-root start
/// with no /etc/fipsrelay) disables the admin API with a warning instead of
/// failing the start; an explicit admin.token_file, or an insecure one, fails.
pub(super) fn admin_token(config: &Config, inherited: Option<Vec<u8>>) -> Result<Option<AdminToken>, TokenError> {
    if !config.admin_enabled {
        return Ok(None);
    }
    if let Some(bytes) = inherited {
        tracing::debug!("admin API token handed over by the previous process");
        return Ok(Some(AdminToken::from_handover(bytes)));
    }
    let default_path = config.admin_token_file == Path::new(config::DEFAULT_ADMIN_TOKEN_FILE);
    match admin::load_or_create_token(&config.admin_token_file) {
        Ok((token, TokenSource::Created)) => {
            tracing::info!(token_file = %config.admin_token_file.display(), "admin API token created (mode 0600)");
            Ok(Some(token))
        }
        Ok((token, TokenSource::Read)) => {
            tracing::debug!(token_file = %config.admin_token_file.display(), "admin API token read");
            Ok(Some(token))
        }
        Err(e @ TokenError::Create { .. }) if default_path => {
            tracing::warn!(error = %e, "admin API disabled: no token; status, metrics and health stay available");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The state the workers share, published once: routes, the upstream
/// directory (through the proxy, if any), the stats hub and the status.
pub(super) fn share(config: Config, admitted: &Admitted, admin: AdminAccess, proxy: Option<&Arc<Proxy>>) -> Shared {
    let config = Arc::new(config);
    let routes = Arc::new(RouteTable::new(&config));
    let directory = Arc::new(directory(&config, &routes, proxy));
    let hub = Arc::new(StatsHub::new(admitted.workers, routes.upstreams.len()));
    let info = Arc::new(StatusInfo {
        version: VERSION,
        commit: COMMIT,
        fips_module: admitted.fips_module.clone(),
        io_backend: admitted.backend,
        listen_address: config.listen_address,
        port_range_start: config.port_range_start,
        upstream_protocol: config.protocol.label(),
        workers: admitted.workers,
        routes: routes.clone(),
        directory: directory.clone(),
        admin,
        readiness: std::sync::atomic::AtomicU8::new(crate::status::READY_STARTING),
    });
    Shared { config, routes, directory, hub, info }
}

/// The upstream directory; with a proxy, which hosts go through it.
fn directory(config: &Config, routes: &RouteTable, proxy: Option<&Arc<Proxy>>) -> Directory {
    let directory = Directory::new(routes, &config.override_addrs, config.health);
    let Some(p) = proxy else { return directory };
    let directory = directory.with_proxy(p.clone(), config.upstream_port);
    let direct: Vec<&str> =
        (0..directory.len()).filter(|id| !directory.via_proxy(*id)).map(|id| directory.host(id)).collect();
    tracing::info!(
        proxy = %p.display,
        from = p.config.source,
        intake_names = if p.config.resolve_locally { "resolved here (upstream.proxy.resolve_locally)" } else { "resolved by the proxy" },
        user = p.user().as_deref().unwrap_or("(no credentials)"),
        direct = ?direct,
        "egress through an HTTP CONNECT proxy; TLS to the intake stays end to end inside the tunnel"
    );
    if !config.raw.upstream.proxy.no_proxy_skipped.is_empty() {
        tracing::warn!(
            skipped = ?config.raw.upstream.proxy.no_proxy_skipped,
            "NO_PROXY entries that are not host names (addresses, CIDR ranges, ports) are ignored: the relay's upstreams are names"
        );
    }
    directory
}

/// One TLS config per worker (ALPN as `upstream.protocol` says) and one for
/// the health checks, built now: the CA file may be readable only as root.
pub(super) fn tls_per_worker(config: &Config, trust: &TrustSource, workers: usize) -> Result<WorkerTls, CryptoError> {
    let mut per_worker = Vec::with_capacity(workers);
    for _ in 0..workers {
        let base = crypto::client_config(trust)?;
        per_worker.push(match config.protocol {
            UpstreamProtocol::Http1 => base,
            UpstreamProtocol::H2 => crypto::with_alpn(&base, &[crypto::ALPN_H2]),
            UpstreamProtocol::Auto => crypto::with_alpn(&base, &[crypto::ALPN_H2, crypto::ALPN_HTTP1]),
        });
    }
    let health = crypto::client_config(trust)?;
    Ok(WorkerTls { per_worker, health })
}

/// Everything that needs root is done (ports bound, CA file and secrets
/// read): becomes run.user before any thread starts.
pub(super) fn drop_privileges(config: &Config) -> Result<(), privileges::PrivilegeError> {
    match &config.run_user {
        Some(user) => match privileges::drop_to(user)? {
            privileges::Outcome::Dropped { uid, gid } => {
                tracing::info!(user = %user, uid, gid, "dropped root privileges; no capabilities kept")
            }
            privileges::Outcome::NotRoot => {}
        },
        None if unsafe { libc::geteuid() } == 0 => {
            tracing::warn!("running as root; set run.user (the packaged default) or start as an unprivileged user")
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptors_needed_counts_listeners_reserve_and_two_per_connection() {
        use super::{descriptors_needed, max_connections_within};
        // 2 × (16 listeners + 16 status + 2 × 50) + 64.
        assert_eq!(descriptors_needed(50, 2), 328);
        assert_eq!(descriptors_needed(4096, 1), 16 + 16 + 8192 + 64);
        assert_eq!(max_connections_within(328, 2), 50);
        assert!(descriptors_needed(max_connections_within(1024, 4) as usize, 4) <= 1024);
        assert_eq!(max_connections_within(10, 2), 0);
    }

    #[test]
    fn cgroup_cpu_quota_rounds_up_and_ignores_max() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::cgroup_cpu_quota(dir.path()), None);
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(super::cgroup_cpu_quota(dir.path()), None);
        std::fs::write(dir.path().join("cpu.max"), "150000 100000\n").unwrap();
        assert_eq!(super::cgroup_cpu_quota(dir.path()), Some(2));
        std::fs::write(dir.path().join("cpu.max"), "20000 100000\n").unwrap();
        assert_eq!(super::cgroup_cpu_quota(dir.path()), Some(1));
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("cpu")).unwrap();
        std::fs::write(v1.path().join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(v1.path().join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(super::cgroup_cpu_quota(v1.path()), None);
        std::fs::write(v1.path().join("cpu/cpu.cfs_quota_us"), "300000\n").unwrap();
        assert_eq!(super::cgroup_cpu_quota(v1.path()), Some(3));
    }
}
