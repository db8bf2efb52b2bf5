//! A worker's state, shared by every connection it serves: its config
//! and routes, its upstream pools, its buffers and stats, its phase. Lives
//! on one thread. This is the only thing the relay takes from the worker.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;
use tokio::sync::watch;

use super::phase::{LocalPhase, Phase};
use crate::buffers::{BufferPool, MAX_FREE_BUFFERS};
use crate::config::Config;
use crate::io::Backend;
use crate::logging::summary::Summaries;
use crate::metrics::{StatsHub, WorkerStats};
use crate::route::{RouteTable, UpstreamId};
use crate::rt::Mark;
use crate::status::StatusInfo;
use crate::upstream::connect::Connector;
use crate::upstream::h2pool::H2Hosts;
use crate::upstream::Directory;

/// Everything a worker's connections share. Lives on one thread.
pub struct WorkerCtx<B: Backend> {
    pub id: usize,
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    /// The way to the intake hosts: addresses, TLS, the HTTP/1.1 session pool.
    pub upstream: Connector<B>,
    /// HTTP/2 connections per intake host (`upstream.protocol` h2 or auto).
    pub h2: RefCell<H2Hosts>,
    /// I/O buffers lent to connections while they carry a request.
    pub buffers: RefCell<BufferPool>,
    pub stats: RefCell<WorkerStats>,
    /// Failures that repeat per request or connection, counted for one
    /// summary line per key (shared with `upstream`).
    pub log: Rc<Summaries>,
    pub hub: Arc<StatsHub>,
    pub info: Arc<StatusInfo>,
    pub phase: watch::Receiver<Phase>,
    /// `phase` as this thread last saw it (what connections look at).
    pub local_phase: LocalPhase,
    /// Requests between a complete head and a complete answer.
    pub in_flight: Cell<usize>,
    /// Agent connections open (product ports), bounded by `limits.max_connections`.
    pub connections: Cell<usize>,
    /// Status-port connections open, bounded apart by
    /// [`crate::config::STATUS_CONNECTIONS_PER_WORKER`].
    pub status_connections: Cell<usize>,
    /// Something the stats show changed since the last publish (a
    /// connection, a request, an HTTP/2 connection's PING or end); the
    /// housekeeping task sleeps until it does.
    changed: Rc<Mark>,
    /// Idle Agent connections for the next process (restart in place only).
    pub handed_over: Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>,
}

impl<B: Backend> WorkerCtx<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        config: Arc<Config>,
        routes: Arc<RouteTable>,
        directory: Arc<Directory>,
        tls: Arc<ClientConfig>,
        hub: Arc<StatsHub>,
        info: Arc<StatusInfo>,
        phase: watch::Receiver<Phase>,
        handed_over: Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>,
    ) -> Self {
        let n = routes.upstreams.len();
        let changed = Rc::new(Mark::default());
        let current = *phase.borrow();
        let log = Rc::new(Summaries::default());
        WorkerCtx {
            id,
            upstream: Connector::new(config.clone(), routes.clone(), directory, tls, log.clone()),
            log,
            h2: RefCell::new(H2Hosts::new(n, changed.clone())),
            buffers: RefCell::new(BufferPool::new(MAX_FREE_BUFFERS)),
            stats: RefCell::new(WorkerStats::new(n)),
            config,
            routes,
            hub,
            info,
            local_phase: LocalPhase::new(current),
            phase,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            changed,
            status_connections: Cell::new(0),
            handed_over,
        }
    }

    pub fn draining(&self) -> Option<Instant> {
        match self.local_phase.get() {
            Phase::Running => None,
            Phase::Draining { deadline, .. } => Some(deadline),
        }
    }

    /// Resolves once the drain deadline has passed (never while running).
    pub(crate) async fn drain_deadline(&self) {
        self.local_phase.draining().await;
        if let Phase::Draining { deadline, .. } = self.local_phase.get() {
            crate::rt::sleep_until(deadline).await;
        }
    }

    /// Whether this drain is a restart in place (connections handed over).
    pub fn handing_over(&self) -> bool {
        matches!(self.local_phase.get(), Phase::Draining { handover: true, .. })
    }

    /// Resolves once draining starts.
    pub(crate) async fn drain_started(&self) {
        self.local_phase.draining().await;
    }

    /// Marks the worker's stats changed (a connection opened or closed, a
    /// request came): the next publish is due. Only the first mark after a
    /// publish wakes the housekeeping task.
    pub fn touch(&self) {
        self.changed.set();
    }

    /// Resolves once [`WorkerCtx::touch`] was called since the last
    /// [`WorkerCtx::untouch`].
    pub async fn touched(&self) {
        self.changed.wait().await
    }

    /// The stats are about to be published: the next change marks again.
    pub fn untouch(&self) {
        self.changed.clear();
    }

    pub(crate) fn upstream_host(&self, id: UpstreamId) -> &str {
        self.upstream.host(id)
    }
}
