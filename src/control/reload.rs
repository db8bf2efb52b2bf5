//! A config reload, from SIGHUP or `POST /admin/reload`: re-read the config
//! (`admin::Reloader` applies what applies live), re-read the egress proxy's
//! credentials, or, when a restart-only key changed or the binary on disk
//! was replaced, decide on a restart in place once [`restart::check`] passed.
//! Every reload ends in one log line saying how it ended.
//!
//! A reload never stops the relay itself: it answers, and at most hands a
//! [`RestartPlan`] back to the signal loop. It must never apply half of a
//! config it refuses.

use std::net::SocketAddr;
use std::sync::Arc;

use super::restart::{self, Origin, RestartPlan};
use crate::admin::{self, AdminReply, Reloader};
use crate::config::Config;
use crate::upstream::proxy::Proxy;

/// What a reload compares against and checks before a restart in place.
pub(super) struct Running<'a> {
    config: &'a Config,
    origin: Origin,
    reloader: Reloader,
    /// Whether the admin token is held (it is handed over).
    token: bool,
    /// The egress proxy: its credentials are re-read at each reload.
    proxy: Option<Arc<Proxy>>,
}

impl<'a> Running<'a> {
    pub fn new(
        config: &'a Config,
        origin: Origin,
        reloader: Reloader,
        token: bool,
        proxy: Option<Arc<Proxy>>,
    ) -> Running<'a> {
        Running { config, origin, reloader, token, proxy }
    }

    /// Runs a reload and logs how it ended: the answer, and the restart to
    /// do when the reload needs one and every check before it passed.
    pub fn reload(&mut self, trigger: &str, peer: Option<SocketAddr>) -> (AdminReply, Option<RestartPlan>) {
        let (answer, restart) = self.apply();
        log_reload(trigger, peer, &answer);
        (answer, restart)
    }

    fn apply(&mut self) -> (AdminReply, Option<RestartPlan>) {
        match self.reloader.reload(self.origin.replaced()) {
            admin::Reload::Done(mut reply) if reply.status == 200 => {
                self.reload_proxy_credentials(&mut reply);
                (reply, None)
            }
            admin::Reload::Done(reply) => (reply, None),
            admin::Reload::Restart { config, reasons } => match restart::check(self.config, self.token, &config) {
                Ok(plan) => {
                    let reply = AdminReply::new(
                        202,
                        format!(
                            "restarting in place to apply: {}; requests in flight finish first, then the listeners and idle connections are handed over to the new process (same PID)\n",
                            reasons.join(", ")
                        ),
                    );
                    (reply, Some(plan))
                }
                Err(why) => (AdminReply::new(409, format!("config not reloaded, nothing applied: {why}\n")), None),
            },
        }
    }

    /// Re-reads the proxy's credentials after a reload applied in place,
    /// and says so in the answer.
    fn reload_proxy_credentials(&self, reply: &mut AdminReply) {
        let Some(p) = &self.proxy else { return };
        match p.reload_credentials() {
            Ok(Some(user)) => {
                reply.body = format!("{}; proxy credentials re-read (user {user})\n", reply.body.trim_end())
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "proxy credentials not reloaded; the previous ones stay in use");
                reply.body =
                    format!("{}; proxy credentials NOT reloaded, the previous ones stay: {e}\n", reply.body.trim_end());
            }
        }
    }
}

/// Logs how a reload (SIGHUP or the admin API) ended.
fn log_reload(trigger: &str, peer: Option<SocketAddr>, reply: &AdminReply) {
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
