//! Starting and stopping the relay: FIPS checks, backend choice, CPU
//! placement, binding, the admin token, the worker threads, and the control
//! loop (signals, admin commands, config reload, DNS refresh, drain).
//!
//! The control loop runs on the calling thread; workers get read-mostly
//! state (`Arc`s and a `watch` channel) and nothing else. Admin requests
//! reach the control loop as [`AdminCommand`]s over a channel; nothing on
//! the data path takes a lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminAccess, AdminCommand, AdminReply, Reloader, TokenError, TokenSource};
use crate::config::{Config, IoChoice, Source, UpstreamProtocol};
use crate::crypto::{self, CryptoError, TrustSource};
use crate::handover;
use crate::io::{epoll::Epoll, uring::Uring, Backend};
use crate::listener::{self, BindError};
use crate::metrics::StatsHub;
use crate::route::RouteTable;
use crate::status::StatusInfo;
use crate::upstream::{self, dns::Resolver, proxy::Proxy, Directory};
use crate::worker::{Phase, WorkerCtx};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("workers.io = \"uring\" but io_uring is unavailable: {0}; use workers.io = \"epoll\" or \"auto\"")]
    UringUnavailable(String),
    #[error("cannot start the control loop: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("cannot start worker {id}: {why}")]
    Worker { id: usize, why: String },
    #[error(transparent)]
    AdminToken(#[from] TokenError),
    #[error(transparent)]
    Proxy(#[from] crate::upstream::proxy::ProxySetupError),
    #[error("restart in place failed: cannot execute {binary}: {source}")]
    Restart { binary: String, source: std::io::Error },
}

/// Why the control loop ended.
enum Stop {
    /// SIGTERM, SIGINT or the admin API: drain and exit.
    Drain(&'static str),
    /// A reload that needs a new process: hand over and exec `binary`.
    Restart { binary: std::path::PathBuf, hand_token: bool },
}

/// The backend the config asks for, after probing `uring`.
///
/// `auto` is the backend measured cheaper for Agent traffic: epoll today.
/// The hand-driven ring costs 0.88–0.95× epoll's CPU per request for 1 KiB
/// bodies but 1.09–1.12× for 64 KiB ones (docs/performance-history.md#the-io_uring-loop-rebuilt-issue-11), and a busy
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

/// `PUT /admin/log-level`: validate, log who changes it to what, apply.
fn set_log_level(peer: std::net::SocketAddr, directive: &str) -> AdminReply {
    if let Err(e) = crate::logging::parse_filter(directive) {
        tracing::warn!(%peer, error = %e, "admin log level change refused");
        return AdminReply::new(400, e.to_string());
    }
    let from = crate::logging::current_filter().unwrap_or_default();
    tracing::info!(%peer, from = %from, to = %directive.trim(), "log level changed through the admin API");
    match crate::logging::set_filter(directive) {
        Ok(now) => AdminReply::new(200, format!("log level set to {now}")),
        Err(e) => AdminReply::new(500, e.to_string()),
    }
}

/// Logs how a reload (SIGHUP or the admin API) ended.
fn log_reload(trigger: &str, peer: Option<std::net::SocketAddr>, reply: &AdminReply) {
    let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let outcome = reply.body.trim_end().replace('\n', "; ");
    if reply.status == 200 {
        tracing::info!(trigger, %peer, outcome = %outcome, "config reloaded");
    } else if reply.status == 202 {
        tracing::info!(trigger, %peer, outcome = %outcome, "config reload needs a new process");
    } else {
        tracing::warn!(trigger, %peer, status = reply.status, outcome = %outcome, "config reload refused");
    }
}

/// The TLS server name (SNI, certificate name) for each upstream.
fn server_names(config: &Config, routes: &RouteTable) -> Vec<String> {
    routes.upstreams.iter().map(|u| config.server_name_for(&u.host).to_string()).collect()
}

/// The warning for a module run through `crypto.allow_unvalidated_module`:
/// at start and every [`crypto::UNVALIDATED_WARNING_INTERVAL`].
fn warn_unvalidated(module: &crypto::FipsModule) {
    tracing::warn!(
        fips = %module,
        status = module.status.name(),
        "the FIPS module is NOT CMVP-validated (crypto.allow_unvalidated_module = true): traffic is not FIPS 140-validated"
    );
}

/// The CPU quota of this process's cgroup in whole CPUs (rounded up), if it
/// has one: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
/// `root` is the cgroup mount (`/sys/fs/cgroup`; inside a container, its own).
pub fn cgroup_cpu_quota(root: &std::path::Path) -> Option<usize> {
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

/// Runs the relay until SIGTERM, SIGINT or `POST /admin/drain`, then drains and returns.
pub fn run(config: Config, source: Source) -> Result<(), StartError> {
    if let Some(line) = crate::config::haproxy_config_notice(std::path::Path::new(crate::config::HAPROXY_CONFIG_PATH)) {
        tracing::warn!(path = crate::config::HAPROXY_CONFIG_PATH, "{line}");
    }
    // First: what a previous process handed over (restart in place).
    let inherited = match handover::take_inherited() {
        Some((inherited, problems)) => {
            for p in problems {
                tracing::warn!(problem = %p, "ignoring part of what the previous process handed over");
            }
            Some(inherited)
        }
        None => None,
    };
    let started_binary = handover::current_binary().ok();
    let binary_identity = started_binary.as_deref().and_then(handover::file_identity);
    let trust = trust_of(&config);
    // Fail before binding anything if the FIPS checks, the module's CMVP
    // status, the trust store or run.user fail.
    crypto::client_config(&trust)?;
    let fips_module = crypto::linked_module();
    let admission = crypto::admit(&fips_module, config.allow_unvalidated_module)?;
    if let (Some(user), 0) = (&config.run_user, unsafe { libc::geteuid() }) {
        crate::privileges::lookup(user)?;
    }
    let backend = choose_backend(config.io)?;
    let cpus = allowed_cpus();
    // 0 = one per CPU this process may use, capped by a cgroup CPU quota
    // (a container's `resources.limits.cpu`), rounded up.
    let workers = if config.threads > 0 {
        config.threads
    } else {
        let quota = cgroup_cpu_quota(std::path::Path::new("/sys/fs/cgroup"));
        cpus.len().max(1).min(quota.unwrap_or(usize::MAX))
    };

    let (inherited_listeners, inherited_conns, inherited_token) = match inherited {
        Some(i) => (i.listeners, i.connections, i.token),
        None => (Vec::new(), Vec::new(), None),
    };
    let took_over = (inherited_listeners.len(), inherited_conns.len());
    let listeners = if inherited_listeners.is_empty() {
        listener::bind_all(config.listen_address, config.port_range_start, workers)?
    } else {
        let (listeners, stray) =
            listener::bind_all_adopting(config.listen_address, config.port_range_start, workers, inherited_listeners)?;
        for addr in stray {
            tracing::warn!(%addr, "closing a listener handed over by the previous process: not in the new listen range");
        }
        listeners
    };
    // Kept to hand over at the next restart in place (one per socket).
    let mut listener_fds = unique_sockets(&listeners);
    let adopted = adopt_connections(&config, inherited_conns, workers);
    if !config.listen_address.is_loopback() {
        tracing::warn!(address = %config.listen_address, "listening on a non-loopback address: Agent traffic to the relay is plaintext, so FIPS compliance is not retained off-host");
    }
    tracing::info!(
        version = VERSION,
        fips = %fips_module,
        io = backend,
        workers,
        listen = %format!("{}:{}-{}", config.listen_address, config.port(0), config.port(crate::config::PORT_COUNT - 1)),
        site = %config.site,
        config = %source,
        "fipsrelay starting"
    );
    if admission == crypto::Admission::AllowedUnvalidated {
        warn_unvalidated(&fips_module);
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

    // The admin token is read (or created) while still privileged, before run.user.
    // With the default path, a token that cannot be created (a non-root start
    // with no /etc/fipsrelay) disables the admin API with a warning instead of
    // failing the start; an explicit admin.token_file, or an insecure one, fails.
    let default_path = config.admin_token_file == std::path::Path::new(crate::config::DEFAULT_ADMIN_TOKEN_FILE);
    let admin_token = if let (true, Some(bytes)) = (config.admin_enabled, inherited_token) {
        tracing::debug!("admin API token handed over by the previous process");
        Some(admin::AdminToken::from_handover(bytes))
    } else if config.admin_enabled {
        match admin::load_or_create_token(&config.admin_token_file) {
            Ok((token, how)) => {
                match how {
                    TokenSource::Created => {
                        tracing::info!(token_file = %config.admin_token_file.display(), "admin API token created (mode 0600)")
                    }
                    TokenSource::Read => {
                        tracing::debug!(token_file = %config.admin_token_file.display(), "admin API token read")
                    }
                }
                Some(token)
            }
            Err(e @ TokenError::Create { .. }) if default_path => {
                tracing::warn!(error = %e, "admin API disabled: no token; status, metrics and health stay available");
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    // The proxy's credentials too are read while still privileged.
    let proxy = match &config.proxy {
        Some(p) => Some(Arc::new(Proxy::from_config(p)?)),
        None => None,
    };
    let (admin_tx, mut admin_rx) = mpsc::unbounded_channel::<AdminCommand>();
    let mut reloader = Reloader::new(source.clone(), config.raw.clone());

    let config = Arc::new(config);
    let routes = Arc::new(RouteTable::new(&config));
    let mut directory = Directory::new(&routes, &config.override_addrs, config.health);
    if let Some(p) = &proxy {
        directory = directory.with_proxy(p.clone(), config.upstream_port);
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
    }
    let directory = Arc::new(directory);
    let hub = Arc::new(StatsHub::new(workers, routes.upstreams.len()));
    let info = Arc::new(StatusInfo {
        version: VERSION,
        fips_module,
        io_backend: backend,
        upstream_protocol: config.protocol.label(),
        workers,
        routes: routes.clone(),
        directory: directory.clone(),
        admin: AdminAccess { token: admin_token, commands: admin_tx },
        readiness: std::sync::atomic::AtomicU8::new(crate::status::READY_STARTING),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);

    // Everything that needs root is done: ports bound, CA file read (one TLS
    // config per worker, built now). Drop to run.user before any thread starts.
    let mut tls_configs = Vec::with_capacity(workers);
    for _ in 0..workers {
        let base = crypto::client_config(&trust)?;
        tls_configs.push(match config.protocol {
            UpstreamProtocol::Http1 => base,
            UpstreamProtocol::H2 => crypto::with_alpn(&base, &[crypto::ALPN_H2]),
            UpstreamProtocol::Auto => crypto::with_alpn(&base, &[crypto::ALPN_H2, crypto::ALPN_HTTP1]),
        });
    }
    let check_tls = crypto::client_config(&trust)?;
    match &config.run_user {
        Some(user) => match crate::privileges::drop_to(user)? {
            crate::privileges::Outcome::Dropped { uid, gid } => {
                tracing::info!(user = %user, uid, gid, "dropped root privileges; no capabilities kept")
            }
            crate::privileges::Outcome::NotRoot => {}
        },
        None if unsafe { libc::geteuid() } == 0 => {
            tracing::warn!("running as root; set run.user (the packaged default) or start as an unprivileged user")
        }
        None => {}
    }

    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
    // The control thread's tasks (DNS, health checks) are local: the I/O
    // seam's futures are not Send.
    let local = tokio::task::LocalSet::new();
    let local_hosts: Vec<usize> = (0..directory.len()).filter(|id| directory.resolves_locally(*id)).collect();
    if !local_hosts.is_empty() || directory.proxy_needs_lookup() {
        // One lookup loop per host resolved here, one for the proxy's name.
        // The first answers are awaited before accepting, bounded so that a
        // dead DNS does not block the start: hosts without an address answer
        // 503 until they resolve.
        let resolver = Arc::new(control.block_on(async { Resolver::new(&config.dns) }));
        tracing::info!(resolver = resolver.describe(), refresh = ?config.dns.refresh, "resolving upstream hosts");
        let (first_tx, mut first_rx) = mpsc::unbounded_channel();
        for &id in &local_hosts {
            let task = upstream::resolve_forever(
                directory.clone(),
                resolver.clone(),
                id,
                config.dns.refresh,
                config.upstream_port,
                first_tx.clone(),
            );
            local.spawn_local(task);
        }
        let mut lookups = local_hosts.len();
        if directory.proxy_needs_lookup() {
            lookups += 1;
            local.spawn_local(upstream::resolve_proxy_forever(
                directory.clone(),
                resolver.clone(),
                config.dns.refresh,
                first_tx.clone(),
            ));
        }
        drop(first_tx);
        let (answered, resolved) = local.block_on(&control, async {
            let (mut answered, mut resolved) = (0, 0);
            // After a restart in place, connections already wait in the
            // accept queues: a shorter wait, then 503 until DNS answers.
            let wait =
                if took_over.0 > 0 { Duration::from_secs(1) } else { config.dns.timeout + Duration::from_secs(1) };
            let _ = tokio::time::timeout(wait, async {
                while let Some(ok) = first_rx.recv().await {
                    answered += 1;
                    resolved += usize::from(ok);
                    if answered == lookups {
                        break;
                    }
                }
            })
            .await;
            (answered, resolved)
        });
        if resolved < lookups {
            tracing::warn!(
                resolved,
                lookups,
                pending = lookups - answered,
                "not every upstream host resolved at start; starting anyway (503 for those until they resolve)"
            );
        }
    }
    if admission == crypto::Admission::AllowedUnvalidated {
        let module = info.fips_module.clone();
        local.spawn_local(async move {
            let start = tokio::time::Instant::now() + crypto::UNVALIDATED_WARNING_INTERVAL;
            let mut tick = tokio::time::interval_at(start, crypto::UNVALIDATED_WARNING_INTERVAL);
            loop {
                tick.tick().await;
                warn_unvalidated(&module);
            }
        });
    }
    if config.health.enabled {
        let checker = upstream::health::Checker::default();
        local.spawn_local(checker.run(directory.clone(), check_tls, server_names(&config, &routes)));
    }

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handed_over = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::with_capacity(workers);
    for (((id, mine), tls), adopted) in listeners.into_iter().enumerate().zip(tls_configs).zip(adopted) {
        let core = if config.pin && !cpus.is_empty() { Some(cpus[id % cpus.len()]) } else { None };
        let (config, routes, directory, hub, info, phase, ready, handed) = (
            config.clone(),
            routes.clone(),
            directory.clone(),
            hub.clone(),
            info.clone(),
            phase_rx.clone(),
            ready_tx.clone(),
            handed_over.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("fipsrelay-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, cpu = core.id, "could not pin worker to its CPU");
                    }
                }
                if backend == Uring::NAME {
                    let ctx = WorkerCtx::<Uring>::new(id, config, routes, directory, tls, hub, info, phase, handed);
                    crate::worker::run(ctx, mine, adopted, ready);
                } else {
                    let ctx = WorkerCtx::<Epoll>::new(id, config, routes, directory, tls, hub, info, phase, handed);
                    crate::worker::run(ctx, mine, adopted, ready);
                }
            })
            .map_err(|e| StartError::Worker { id, why: e.to_string() })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for id in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(StartError::Worker { id, why }),
            Err(_) => return Err(StartError::Worker { id, why: "worker exited during start".into() }),
        }
    }
    info.readiness.store(crate::status::READY_SERVING, std::sync::atomic::Ordering::Release);
    tracing::info!(workers, "fipsrelay ready");

    let running = Running {
        config: &config,
        binary: started_binary,
        binary_identity,
        token: info.admin.token.is_some(),
        proxy: proxy.clone(),
    };
    let (mut term, mut int, mut hup) = {
        let _in_runtime = control.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).map_err(StartError::Runtime)?,
            signal(SignalKind::interrupt()).map_err(StartError::Runtime)?,
            signal(SignalKind::hangup()).map_err(StartError::Runtime)?,
        )
    };
    let mut stop = local.block_on(&control, async {
        let stop = loop {
            tokio::select! {
                _ = term.recv() => break Stop::Drain("SIGTERM"),
                _ = int.recv() => break Stop::Drain("SIGINT"),
                _ = hup.recv() => {
                    let (answer, restart) = running.reload(&mut reloader);
                    log_reload("SIGHUP", None, &answer);
                    if let Some(stop) = restart {
                        break stop;
                    }
                }
                Some(command) = admin_rx.recv() => match command {
                    AdminCommand::Drain { peer } => {
                        tracing::info!(%peer, "drain requested through the admin API");
                        break Stop::Drain("POST /admin/drain");
                    }
                    AdminCommand::SetLogLevel { peer, directive, reply } => {
                        let _ = reply.send(set_log_level(peer, &directive));
                    }
                    AdminCommand::Reload { peer, reply } => {
                        let (answer, restart) = running.reload(&mut reloader);
                        log_reload("POST /admin/reload", Some(peer), &answer);
                        let _ = reply.send(answer);
                        if let Some(stop) = restart {
                            break stop;
                        }
                    }
                },
            }
        };
        let deadline = Instant::now() + config.drain_timeout;
        info.readiness.store(crate::status::READY_DRAINING, std::sync::atomic::Ordering::Release);
        match &stop {
            Stop::Drain(signal) => {
                tracing::info!(signal, drain_timeout = ?config.drain_timeout, "stopping: no new connections, finishing requests in flight");
                let _ = phase_tx.send(Phase::Draining { deadline, handover: false });
            }
            Stop::Restart { binary, .. } => {
                tracing::info!(binary = %binary.display(), drain_timeout = ?config.drain_timeout, "restarting in place: finishing requests in flight, then handing the listeners and idle connections over");
                let _ = phase_tx.send(Phase::Draining { deadline, handover: true });
            }
        }
        Ok::<Stop, StartError>(stop)
    })?;
    if let Stop::Drain(_) = stop {
        // Only a restart in place needs them: closed now, new connects are
        // refused at once instead of queueing for nobody.
        listener_fds.clear();
        for h in handles {
            let _ = h.join();
        }
    } else {
        // While the workers finish, a SIGTERM or SIGINT turns the restart
        // into a plain stop: idle connections are closed, nothing is exec'd.
        let joiner = std::thread::spawn(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        local.block_on(&control, async {
            while !joiner.is_finished() {
                tokio::select! {
                    _ = term.recv() => stop = Stop::Drain("SIGTERM"),
                    _ = int.recv() => stop = Stop::Drain("SIGINT"),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
                tracing::info!("stop requested during the restart in place: closing instead of handing over");
                let deadline = match *phase_tx.borrow() {
                    Phase::Draining { deadline, .. } => deadline,
                    Phase::Running => Instant::now() + config.drain_timeout,
                };
                let _ = phase_tx.send(Phase::Draining { deadline, handover: false });
                break;
            }
        });
        let _ = joiner.join();
    }
    let totals = hub.merged();
    let served: u64 = totals.products.iter().map(|p| p.total_requests()).sum();
    if let Stop::Restart { binary, hand_token } = stop {
        let connections = std::mem::take(&mut *handed_over.lock().unwrap_or_else(|e| e.into_inner()));
        let held = info.admin.token.as_ref().filter(|_| hand_token);
        let token = match held.map(|t| handover::token_memfd(t.secret())) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot hand the admin token over; the next process reads admin.token_file");
                None
            }
            None => None,
        };
        tracing::info!(
            requests = served,
            listeners = listener_fds.len(),
            connections = connections.len(),
            "handing over to the new process"
        );
        let out = handover::Outgoing { listeners: listener_fds, connections, token };
        let source = handover::exec(&binary, out);
        tracing::error!(binary = %binary.display(), error = %source, "restart in place failed; exiting (the service manager restarts fipsrelay)");
        return Err(StartError::Restart { binary: binary.display().to_string(), source });
    }
    tracing::info!(requests = served, "fipsrelay stopped");
    // The control runtime may hold a DNS lookup in its blocking pool: do not wait for it.
    {
        let _in_runtime = control.enter();
        drop(local);
    }
    control.shutdown_background();
    Ok(())
}

fn trust_of(config: &Config) -> TrustSource {
    match &config.ca_file {
        Some(p) => TrustSource::CaFile(p.clone()),
        None => TrustSource::System,
    }
}

/// One descriptor per listening socket (workers may share one), duplicated
/// close-on-exec, to hand over at a restart in place.
fn unique_sockets(listeners: &[listener::WorkerListeners]) -> Vec<std::os::fd::OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (_, l) in listeners.iter().flatten() {
        let Ok(dup) = l.try_clone() else { continue };
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(dup));
        // Without an inode to tell sockets apart, keep it: a duplicate only
        // means one more listener for the same queue in the next process.
        let id = file.metadata().map(|m| m.ino()).ok();
        if id.is_none_or(|id| seen.insert(id)) {
            out.push(std::os::fd::OwnedFd::from(file));
        }
    }
    out
}

/// Idle Agent connections handed over by the previous process, spread over
/// the workers; those on a port outside the new range are closed.
fn adopt_connections(config: &Config, conns: Vec<std::net::TcpStream>, workers: usize) -> Vec<crate::worker::Adopted> {
    let mut out: Vec<crate::worker::Adopted> = (0..workers).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        let offset = c.local_addr().ok().and_then(|a| {
            let p = a.port().checked_sub(config.port_range_start)?;
            let ip_ok = config.listen_address.is_unspecified() || a.ip() == config.listen_address;
            (ip_ok && p < crate::config::PORT_COUNT).then_some(p)
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

/// What a reload compares against and checks before a restart in place.
struct Running<'a> {
    config: &'a Config,
    binary: Option<std::path::PathBuf>,
    binary_identity: Option<(u64, u64)>,
    /// Whether the admin token is held (it is handed over).
    token: bool,
    /// The egress proxy: its credentials are re-read at each reload.
    proxy: Option<Arc<Proxy>>,
}

impl Running<'_> {
    /// Runs a reload: the answer, and the binary to exec when the reload
    /// needs a restart in place and every check before it passed.
    fn reload(&self, reloader: &mut Reloader) -> (AdminReply, Option<Stop>) {
        let replaced = match (&self.binary, self.binary_identity) {
            (Some(b), Some(id)) => handover::file_identity(b).is_some_and(|now| now != id),
            _ => false,
        };
        match reloader.reload(replaced) {
            admin::Reload::Done(mut reply) if reply.status == 200 => {
                if let Some(p) = &self.proxy {
                    match p.reload_credentials() {
                        Ok(Some(user)) => {
                            reply.body = format!("{}; proxy credentials re-read (user {user})\n", reply.body.trim_end())
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "proxy credentials not reloaded; the previous ones stay in use");
                            reply.body = format!(
                                "{}; proxy credentials NOT reloaded, the previous ones stay: {e}\n",
                                reply.body.trim_end()
                            );
                        }
                    }
                }
                (reply, None)
            }
            admin::Reload::Done(reply) => (reply, None),
            admin::Reload::Restart { config, reasons } => match self.check_restart(&config) {
                Ok(stop) => {
                    let reply = AdminReply::new(
                        202,
                        format!(
                            "restarting in place to apply: {}; requests in flight finish first, then the listeners and idle connections are handed over to the new process (same PID)\n",
                            reasons.join(", ")
                        ),
                    );
                    (reply, Some(stop))
                }
                Err(why) => (AdminReply::new(409, format!("config not reloaded, nothing applied: {why}\n")), None),
            },
        }
    }

    /// Everything a restart in place needs, checked now, so that a failure
    /// refuses the reload instead of leaving no process.
    fn check_restart(&self, new: &Config) -> Result<Stop, String> {
        let binary = handover::current_binary().map_err(|e| format!("cannot find the fipsrelay binary: {e}"))?;
        // The binary runs here, and its FIPS module passes its self-tests.
        let out = std::process::Command::new(&binary)
            .arg("version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} version failed ({}): {}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let euid = unsafe { libc::geteuid() };
        if new.run_user != self.config.run_user && euid != 0 {
            return Err(
                "run.user changed, and this process no longer runs as root: `systemctl restart fipsrelay` to apply"
                    .into(),
            );
        }
        if let (Some(user), 0) = (&new.run_user, euid) {
            crate::privileges::lookup(user).map_err(|e| e.to_string())?;
        }
        crypto::client_config(&trust_of(new)).map_err(|e| e.to_string())?;
        choose_backend(new.io).map_err(|e| e.to_string())?;
        if new.listen_address != self.config.listen_address || new.port_range_start != self.config.port_range_start {
            for offset in 0..crate::config::PORT_COUNT {
                let addr = std::net::SocketAddr::new(new.listen_address, new.port(offset));
                let ours = new.listen_address == self.config.listen_address
                    && (self.config.port(0)..=self.config.port(crate::config::PORT_COUNT - 1)).contains(&addr.port());
                if !ours {
                    listener::check_free(addr).map_err(|e| e.to_string())?;
                }
            }
        }
        // The token goes over unless the new config points elsewhere: then
        // the new process reads that file, which must work now, as this user.
        let same_file = new.admin_token_file == self.config.admin_token_file;
        let hand_token = self.token && same_file;
        if new.admin_enabled && !hand_token {
            match admin::load_or_create_token(&new.admin_token_file) {
                Ok(_) => {}
                // The new process turns the API off with a warning, as at a start.
                Err(TokenError::Create { .. })
                    if new.admin_token_file == std::path::Path::new(crate::config::DEFAULT_ADMIN_TOKEN_FILE) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // The new process reads the proxy's credentials as this user.
        if let Some(path) = new.proxy.as_ref().and_then(|p| p.credentials_file.as_ref()) {
            crate::upstream::proxy::load_credentials(path).map_err(|e| e.to_string())?;
        }
        Ok(Stop::Restart { binary, hand_token })
    }
}

#[cfg(test)]
mod tests {
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
