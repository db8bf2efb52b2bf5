//! The control loop, once the workers serve: SIGTERM, SIGINT and
//! `POST /admin/drain` stop the relay; SIGHUP and `POST /admin/reload`
//! reload the config ([`reload`]); `PUT /admin/log-level` changes the log
//! filter. Then the drain: the workers are told to finish what is in flight
//! (and, for a restart in place, to set idle connections aside), and the
//! loop waits for them, turning a restart into a plain stop if SIGTERM or
//! SIGINT comes meanwhile.
//!
//! Admin requests reach this loop as [`AdminCommand`]s over a channel; it
//! must never take a lock the data path takes, nor block on a worker while
//! a signal could still change what happens next.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, watch};

use super::reload::Running;
use super::restart::RestartPlan;
use super::startup::Shared;
use super::tasks::ControlThread;
use super::workers::Workers;
use super::StartError;
use crate::admin::{AdminCommand, AdminReply};
use crate::config::Config;
use crate::worker::Phase;

/// Why the control loop ended.
pub(super) enum Stop {
    /// SIGTERM, SIGINT or the admin API: drain and exit.
    Drain(&'static str),
    /// A reload that needs a new process: hand over and exec.
    Restart(RestartPlan),
}

/// The signal streams the control loop listens to.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install(control: &ControlThread) -> Result<Signals, StartError> {
        let _in_runtime = control.enter();
        use tokio::signal::unix::{signal, SignalKind};
        let signals = Signals {
            term: signal(SignalKind::terminate()).map_err(StartError::Runtime)?,
            int: signal(SignalKind::interrupt()).map_err(StartError::Runtime)?,
            hup: signal(SignalKind::hangup()).map_err(StartError::Runtime)?,
        };
        // After a restart in place these came blocked (see `handover::exec`):
        // the handlers are in place now, so what waited is delivered to them.
        super::handover::stop_signals(libc::SIG_UNBLOCK);
        Ok(signals)
    }
}

/// Serves signals and admin commands until a stop, then starts the drain.
pub(super) fn serve(
    control: &ControlThread,
    signals: &mut Signals,
    running: Running<'_>,
    admin_rx: &mut mpsc::UnboundedReceiver<AdminCommand>,
    phase_tx: &watch::Sender<Phase>,
    shared: &Shared,
) -> Stop {
    let stop = control.block_on(wait_for_stop(signals, running, admin_rx));
    let config = &shared.config;
    let deadline = Instant::now() + config.drain_timeout;
    shared.info.readiness.store(crate::status::READY_DRAINING, std::sync::atomic::Ordering::Release);
    match &stop {
        Stop::Drain(signal) => {
            tracing::info!(signal, drain_timeout = ?config.drain_timeout, "stopping: no new connections, finishing requests in flight");
            let _ = phase_tx.send(Phase::Draining { deadline, handover: false });
        }
        Stop::Restart(RestartPlan { binary, .. }) => {
            tracing::info!(binary = %binary.display(), drain_timeout = ?config.drain_timeout, "restarting in place: finishing requests in flight, then handing the listeners and idle connections over");
            let _ = phase_tx.send(Phase::Draining { deadline, handover: true });
        }
    }
    stop
}

async fn wait_for_stop(
    signals: &mut Signals,
    mut running: Running<'_>,
    admin_rx: &mut mpsc::UnboundedReceiver<AdminCommand>,
) -> Stop {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return Stop::Drain("SIGTERM"),
            _ = signals.int.recv() => return Stop::Drain("SIGINT"),
            _ = signals.hup.recv() => {
                if let (_, Some(plan)) = running.reload("SIGHUP", None) {
                    return Stop::Restart(plan);
                }
            }
            Some(command) = admin_rx.recv() => match command {
                AdminCommand::Drain { peer } => {
                    tracing::info!(%peer, "drain requested through the admin API");
                    return Stop::Drain("POST /admin/drain");
                }
                AdminCommand::SetLogLevel { peer, directive, reply } => {
                    let _ = reply.send(set_log_level(peer, &directive));
                }
                AdminCommand::Reload { peer, reply } => {
                    let (answer, restart) = running.reload("POST /admin/reload", Some(peer));
                    let _ = reply.send(answer);
                    if let Some(plan) = restart {
                        return Stop::Restart(plan);
                    }
                }
            },
        }
    }
}

/// `PUT /admin/log-level`: validate, log who changes it to what, apply.
fn set_log_level(peer: SocketAddr, directive: &str) -> AdminReply {
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

/// Waits for the workers to drain. A plain stop closes the listening
/// sockets first (new connects are refused at once instead of queueing for
/// nobody); during a restart in place a SIGTERM or SIGINT turns it into a
/// plain stop: idle connections are closed, nothing is exec'd.
pub(super) fn drain(
    control: &ControlThread,
    signals: &mut Signals,
    stop: Stop,
    workers: &mut Workers,
    sockets: &mut Vec<OwnedFd>,
    phase_tx: &watch::Sender<Phase>,
    config: &Config,
) -> Stop {
    if let Stop::Drain(_) = stop {
        sockets.clear();
        workers.join();
        return stop;
    }
    let joiner = workers.join_in_background();
    let stop = control.block_on(async {
        while !joiner.is_finished() {
            let signal = tokio::select! {
                _ = signals.term.recv() => "SIGTERM",
                _ = signals.int.recv() => "SIGINT",
                _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
            };
            tracing::info!("stop requested during the restart in place: closing instead of handing over");
            let deadline = match *phase_tx.borrow() {
                Phase::Draining { deadline, .. } => deadline,
                Phase::Running => Instant::now() + config.drain_timeout,
            };
            let _ = phase_tx.send(Phase::Draining { deadline, handover: false });
            return Stop::Drain(signal);
        }
        stop
    });
    let _ = joiner.join();
    stop
}
