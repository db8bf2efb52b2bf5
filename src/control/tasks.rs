//! The control thread's runtime (a current-thread tokio runtime and a
//! `LocalSet`: the I/O seam's futures are not `Send`) and the tasks it runs
//! for the life of the relay beside the signal loop: one DNS lookup loop per
//! host resolved here and one for the proxy's name (the first answers
//! awaited at start, bounded), the upstream health checks, and the reminder
//! that an unvalidated FIPS module is in use.
//!
//! These tasks publish to the [`Directory`] the workers read; they must
//! never block the control thread, and never touch a worker's state.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::LocalSet;

use super::startup::warn_unvalidated;
use super::StartError;
use crate::config::Config;
use crate::crypto::{self, Admission, FipsModule};
use crate::route::RouteTable;
use crate::upstream::{self, dns::Resolver, Directory};

/// The control thread's runtime and its local tasks.
pub(super) struct ControlThread {
    // Dropped before the runtime, as it was created after it.
    local: LocalSet,
    runtime: Runtime,
}

impl ControlThread {
    /// Starts the runtime on the calling thread (after the privilege drop:
    /// its blocking pool starts threads).
    pub fn start() -> Result<ControlThread, StartError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
        Ok(ControlThread { local: LocalSet::new(), runtime })
    }

    /// Runs `f` on the control thread, the local tasks running meanwhile.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.local.block_on(&self.runtime, f)
    }

    /// Enters the runtime (to create signal streams and the like).
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }

    /// Starts the DNS lookup loops and waits for their first answers,
    /// bounded so that a dead DNS does not block the start: hosts without
    /// an address answer 503 until they resolve. After a restart in place
    /// connections already wait in the accept queues, so the wait is short.
    pub fn resolve_upstreams(&self, config: &Config, directory: &Arc<Directory>, restarted: bool) {
        let local_hosts: Vec<usize> = (0..directory.len()).filter(|id| directory.resolves_locally(*id)).collect();
        if local_hosts.is_empty() && !directory.proxy_needs_lookup() {
            return;
        }
        let resolver = Arc::new(self.runtime.block_on(async { Resolver::new(&config.dns) }));
        tracing::info!(resolver = resolver.describe(), refresh = ?config.dns.refresh, "resolving upstream hosts");
        let (first_tx, first_rx) = mpsc::unbounded_channel();
        for &id in &local_hosts {
            let task = upstream::resolve_forever(
                directory.clone(),
                resolver.clone(),
                id,
                config.dns.refresh,
                config.upstream_port,
                first_tx.clone(),
            );
            self.local.spawn_local(task);
        }
        let mut lookups = local_hosts.len();
        if directory.proxy_needs_lookup() {
            lookups += 1;
            let task = upstream::resolve_proxy_forever(
                directory.clone(),
                resolver.clone(),
                config.dns.refresh,
                first_tx.clone(),
            );
            self.local.spawn_local(task);
        }
        drop(first_tx);
        let wait = if restarted { Duration::from_secs(1) } else { config.dns.timeout + Duration::from_secs(1) };
        self.await_first_answers(first_rx, lookups, wait);
    }

    /// Waits up to `wait` for the first answer of each of `lookups` loops;
    /// warns when some did not resolve.
    fn await_first_answers(&self, mut first_rx: mpsc::UnboundedReceiver<bool>, lookups: usize, wait: Duration) {
        let (answered, resolved) = self.block_on(async {
            let (mut answered, mut resolved) = (0, 0);
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

    /// With `crypto.allow_unvalidated_module` in use, repeats the warning
    /// every [`crypto::UNVALIDATED_WARNING_INTERVAL`].
    pub fn remind_unvalidated(&self, admission: Admission, module: &FipsModule) {
        if admission != Admission::AllowedUnvalidated {
            return;
        }
        let module = module.clone();
        self.local.spawn_local(async move {
            let start = tokio::time::Instant::now() + crypto::UNVALIDATED_WARNING_INTERVAL;
            let mut tick = tokio::time::interval_at(start, crypto::UNVALIDATED_WARNING_INTERVAL);
            loop {
                tick.tick().await;
                warn_unvalidated(&module);
            }
        });
    }

    /// Starts the upstream health checks, when `health.enabled`.
    pub fn check_health(
        &self,
        config: &Config,
        routes: &RouteTable,
        directory: &Arc<Directory>,
        tls: Arc<ClientConfig>,
    ) {
        if !config.health.enabled {
            return;
        }
        let checker = upstream::health::Checker::default();
        self.local.spawn_local(checker.run(directory.clone(), tls, server_names(config, routes)));
    }

    /// Stops the runtime without waiting for it: it may hold a DNS lookup
    /// in its blocking pool.
    pub fn shutdown(self) {
        {
            let _in_runtime = self.runtime.enter();
            drop(self.local);
        }
        self.runtime.shutdown_background();
    }
}

/// The TLS server name (SNI, certificate name) for each upstream.
fn server_names(config: &Config, routes: &RouteTable) -> Vec<String> {
    routes.upstreams.iter().map(|u| config.server_name_for(&u.host).to_string()).collect()
}
