//! The long-running relay: [`run`] starts it, serves until a stop, then
//! drains or restarts in place. `run` reads as its list of steps; each step
//! lives in a sibling file: `startup` (hand-over intake, FIPS admission,
//! binding, admin token, proxy, shared state, TLS per worker, privilege
//! drop), `tasks` (the control thread's runtime: DNS, health checks),
//! `workers` (the worker threads), `signals` (the signal and admin loop,
//! the drain), `reload` and `restart` (restart in place, over the
//! descriptor hand-over in [`handover`]), and [`privileges`] (dropping
//! root to `run.user`).
//!
//! This module owns the order of the steps and the start error. It must
//! never print (the one-shot commands are in `cli`), never touch a
//! connection, and never start a thread before `startup::drop_privileges`.

pub mod handover;
pub mod privileges;
mod reload;
mod restart;
mod signals;
mod startup;
mod tasks;
mod workers;

use tokio::sync::{mpsc, watch};

use crate::admin::{AdminAccess, Reloader, TokenError};
use crate::config::{Config, Source};
use crate::crypto::CryptoError;
use crate::listener::BindError;
use crate::worker::Phase;

pub use startup::{allowed_cpus, cgroup_cpu_quota, choose_backend, preflight, Admitted};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (`build.rs`): a short hash, with
/// `-dirty` when the checkout had changes, or `unknown` outside git.
pub const COMMIT: &str = env!("FIPSRELAY_COMMIT");

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
    Privileges(#[from] privileges::PrivilegeError),
    #[error("cannot start worker {id}: {why}")]
    Worker { id: usize, why: String },
    #[error(transparent)]
    AdminToken(#[from] TokenError),
    #[error(transparent)]
    Proxy(#[from] crate::upstream::proxy::ProxySetupError),
    #[error("restart in place failed: cannot execute {binary}: {source}")]
    Restart { binary: String, source: std::io::Error },
}

/// Runs the relay until SIGTERM, SIGINT or `POST /admin/drain`, then drains and returns.
pub fn run(config: Config, source: Source) -> Result<(), StartError> {
    startup::notice_haproxy_config();
    // First: what a previous process handed over (restart in place).
    let handover::Inherited { listeners, connections, token } = startup::take_inherited();
    let origin = restart::Origin::record();
    let admitted = startup::preflight(&config, token.is_some())?;
    let mut bound = startup::bind(&config, admitted.workers, listeners, connections)?;
    startup::announce(&config, &source, &admitted, bound.took_over);
    startup::fit_descriptors(&config, admitted.workers);
    let admin_token = startup::admin_token(&config, token)?;
    let proxy = admitted.proxy.clone();
    let (admin_tx, mut admin_rx) = mpsc::unbounded_channel();
    let reloader = Reloader::new(source.clone(), config.raw.clone());
    let admin = AdminAccess { token: admin_token, commands: admin_tx };
    let shared = startup::share(config, &admitted, admin, proxy.as_ref());
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let tls = startup::tls_per_worker(&shared.config, &admitted.trust, admitted.workers)?;
    startup::drop_privileges(&shared.config)?;

    let control = tasks::ControlThread::start()?;
    control.resolve_upstreams(&shared.config, &shared.directory, bound.took_over.0 > 0);
    control.remind_unvalidated(admitted.admission, &shared.info.fips_module);
    control.check_health(&shared.config, &shared.routes, &shared.directory, tls.health);
    let mut workers = workers::spawn(&shared, &admitted, bound.listeners, bound.adopted, tls.per_worker, phase_rx)?;
    workers::announce_ready(&shared.info, admitted.workers);

    let running = reload::Running::new(&shared.config, origin, reloader, shared.info.admin.token.is_some(), proxy);
    let mut signals = signals::Signals::install(&control)?;
    let stop = signals::serve(&control, &mut signals, running, &mut admin_rx, &phase_tx, &shared);
    let stop =
        signals::drain(&control, &mut signals, stop, &mut workers, &mut bound.sockets, &phase_tx, &shared.config);
    let served: u64 = shared.hub.merged().products.iter().map(|p| p.total_requests()).sum();
    if let signals::Stop::Restart(plan) = stop {
        let token = shared.info.admin.token.as_ref();
        return Err(restart::hand_over(plan, bound.sockets, &workers.handed_over, token, served));
    }
    tracing::info!(requests = served, "fipsrelay stopped");
    control.shutdown();
    Ok(())
}
