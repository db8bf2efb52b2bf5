//! Restart in place, the policy around the descriptor hand-over in
//! [`handover`]: which binary this process started from (to notice a
//! package upgrade), the checks a reload must pass before a restart is
//! promised ([`check`]), and the last step once the workers have drained
//! ([`hand_over`]): the listeners, the idle connections and the admin token
//! go to the new process through exec.
//!
//! Every check that can fail runs before the workers drain, so that a
//! failure refuses the reload instead of leaving no process. It must never
//! exec while a worker still runs.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use super::startup::{choose_backend, trust_of};
use super::{handover, privileges, StartError};
use crate::admin::{self, AdminToken, TokenError};
use crate::config::{self, Config};
use crate::{crypto, listener};

/// The binary this process was started from, to notice that it was replaced.
pub(super) struct Origin {
    binary: Option<PathBuf>,
    /// (device, inode) at start.
    identity: Option<(u64, u64)>,
}

impl Origin {
    pub fn record() -> Origin {
        let binary = handover::current_binary().ok();
        let identity = binary.as_deref().and_then(handover::file_identity);
        Origin { binary, identity }
    }

    /// Whether the file this process started from is now another one.
    pub fn replaced(&self) -> bool {
        match (&self.binary, self.identity) {
            (Some(b), Some(id)) => handover::file_identity(b).is_some_and(|now| now != id),
            _ => false,
        }
    }
}

/// A restart in place every check passed for.
pub(super) struct RestartPlan {
    pub binary: PathBuf,
    /// Whether the admin token goes over (else the new process reads its file).
    pub hand_token: bool,
}

/// Everything a restart in place into `new` needs, checked now, so that a
/// failure refuses the reload instead of leaving no process. `current` is
/// the running config; `token_held`, whether this process holds the admin token.
pub(super) fn check(current: &Config, token_held: bool, new: &Config) -> Result<RestartPlan, String> {
    let binary = check_binary()?;
    let euid = unsafe { libc::geteuid() };
    if new.run_user != current.run_user && euid != 0 {
        return Err(
            "run.user changed, and this process no longer runs as root: `systemctl restart fipsrelay` to apply".into(),
        );
    }
    if let (Some(user), 0) = (&new.run_user, euid) {
        privileges::lookup(user).map_err(|e| e.to_string())?;
    }
    crypto::client_config(&trust_of(new)).map_err(|e| e.to_string())?;
    choose_backend(new.io).map_err(|e| e.to_string())?;
    check_ports(current, new)?;
    // The token goes over unless the new config points elsewhere: then
    // the new process reads that file, which must work now, as this user.
    let hand_token = token_held && new.admin_token_file == current.admin_token_file;
    if new.admin_enabled && !hand_token {
        match admin::load_or_create_token(&new.admin_token_file) {
            Ok(_) => {}
            // The new process turns the API off with a warning, as at a start.
            Err(TokenError::Create { .. })
                if new.admin_token_file == std::path::Path::new(config::DEFAULT_ADMIN_TOKEN_FILE) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // The new process reads the proxy's credentials as this user.
    if let Some(path) = new.proxy.as_ref().and_then(|p| p.credentials_file.as_ref()) {
        crate::upstream::proxy::load_credentials(path).map_err(|e| e.to_string())?;
    }
    Ok(RestartPlan { binary, hand_token })
}

/// The binary runs here, and its FIPS module passes its self-tests.
fn check_binary() -> Result<PathBuf, String> {
    let binary = handover::current_binary().map_err(|e| format!("cannot find the fipsrelay binary: {e}"))?;
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
    Ok(binary)
}

/// A moved listen range: every port not already ours must be free.
fn check_ports(current: &Config, new: &Config) -> Result<(), String> {
    if new.listen_address == current.listen_address && new.port_range_start == current.port_range_start {
        return Ok(());
    }
    for offset in 0..config::PORT_COUNT {
        let addr = std::net::SocketAddr::new(new.listen_address, new.port(offset));
        let ours = new.listen_address == current.listen_address
            && (current.port(0)..=current.port(config::PORT_COUNT - 1)).contains(&addr.port());
        if !ours {
            listener::check_free(addr).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The workers have drained: hands the listeners, the idle connections and
/// (per the plan) the admin token over and execs the new binary. Returns
/// only if exec failed; the process then exits and its service manager
/// restarts it.
pub(super) fn hand_over(
    plan: RestartPlan,
    listeners: Vec<OwnedFd>,
    handed_over: &Mutex<Vec<OwnedFd>>,
    token: Option<&AdminToken>,
    served: u64,
) -> StartError {
    let RestartPlan { binary, hand_token } = plan;
    let connections = std::mem::take(&mut *handed_over.lock().unwrap_or_else(|e| e.into_inner()));
    let token = match token.filter(|_| hand_token).map(|t| handover::token_memfd(t.secret())) {
        Some(Ok(fd)) => Some(fd),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot hand the admin token over; the next process reads admin.token_file");
            None
        }
        None => None,
    };
    tracing::info!(
        requests = served,
        listeners = listeners.len(),
        connections = connections.len(),
        "handing over to the new process"
    );
    let out = handover::Outgoing { listeners, connections, token };
    let source = handover::exec(&binary, out);
    tracing::error!(binary = %binary.display(), error = %source, "restart in place failed; exiting (the service manager restarts fipsrelay)");
    StartError::Restart { binary: binary.display().to_string(), source }
}
