//! The worker threads: one per worker, pinned to its CPU when `workers.pin`
//! says so, each given its listeners, its TLS config, the connections a
//! previous process handed over, and read-mostly shared state (`Arc`s and
//! the phase `watch`). Spawning waits until every worker reports that its
//! listeners are registered; joining waits for their drain.
//!
//! Nothing here runs on the data path or holds a worker's state: a worker
//! owns everything it was given. It must never start a worker before the
//! privilege drop.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustls::ClientConfig;
use tokio::sync::watch;

use super::startup::{Admitted, Shared};
use super::StartError;
use crate::io::{epoll::Epoll, uring::Uring, Backend};
use crate::listener::WorkerListeners;
use crate::status::StatusInfo;
use crate::worker::{Adopted, Phase, WorkerCtx};

/// The running worker threads.
pub(super) struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Idle Agent connections the workers set aside for the next process
    /// during a restart in place.
    pub handed_over: Arc<Mutex<Vec<OwnedFd>>>,
}

/// One worker's start: everything its thread takes with it.
struct WorkerStart {
    id: usize,
    core: Option<core_affinity::CoreId>,
    backend: &'static str,
    shared: Shared,
    tls: Arc<ClientConfig>,
    phase: watch::Receiver<Phase>,
    handed_over: Arc<Mutex<Vec<OwnedFd>>>,
    listeners: WorkerListeners,
    adopted: Adopted,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// Starts one thread per worker and waits until each is accepting.
pub(super) fn spawn(
    shared: &Shared,
    admitted: &Admitted,
    listeners: Vec<WorkerListeners>,
    adopted: Vec<Adopted>,
    tls: Vec<Arc<ClientConfig>>,
    phase: watch::Receiver<Phase>,
) -> Result<Workers, StartError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handed_over = Arc::new(Mutex::new(Vec::new()));
    let cpus = &admitted.cpus;
    let mut threads = Vec::with_capacity(admitted.workers);
    for (((id, listeners), tls), adopted) in listeners.into_iter().enumerate().zip(tls).zip(adopted) {
        let core = if shared.config.pin && !cpus.is_empty() { Some(cpus[id % cpus.len()]) } else { None };
        let start = WorkerStart {
            id,
            core,
            backend: admitted.backend,
            shared: shared.clone(),
            tls,
            phase: phase.clone(),
            handed_over: handed_over.clone(),
            listeners,
            adopted,
            ready: ready_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("fipsrelay-w{id}"))
            .spawn(move || start.run())
            .map_err(|e| StartError::Worker { id, why: e.to_string() })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for id in 0..admitted.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(StartError::Worker { id, why }),
            Err(_) => return Err(StartError::Worker { id, why: "worker exited during start".into() }),
        }
    }
    Ok(Workers { threads, handed_over })
}

impl WorkerStart {
    /// The worker thread: pins itself, then runs the worker until its drain ends.
    fn run(self) {
        let id = self.id;
        if let Some(core) = self.core {
            if !core_affinity::set_for_current(core) {
                tracing::warn!(worker = id, cpu = core.id, "could not pin worker to its CPU");
            }
        }
        let Shared { config, routes, directory, hub, info } = self.shared;
        let (tls, phase, handed) = (self.tls, self.phase, self.handed_over);
        if self.backend == Uring::NAME {
            let ctx = WorkerCtx::<Uring>::new(id, config, routes, directory, tls, hub, info, phase, handed);
            crate::worker::run(ctx, self.listeners, self.adopted, self.ready);
        } else {
            let ctx = WorkerCtx::<Epoll>::new(id, config, routes, directory, tls, hub, info, phase, handed);
            crate::worker::run(ctx, self.listeners, self.adopted, self.ready);
        }
    }
}

/// Every worker is accepting: readiness turns to serving.
pub(super) fn announce_ready(info: &StatusInfo, workers: usize) {
    info.readiness.store(crate::status::READY_SERVING, std::sync::atomic::Ordering::Release);
    tracing::info!(workers, "fipsrelay ready");
}

impl Workers {
    /// Waits until every worker thread has ended.
    pub fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Joins the worker threads on a thread of its own, which ends when they have.
    pub fn join_in_background(&mut self) -> JoinHandle<()> {
        let threads = std::mem::take(&mut self.threads);
        std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
        })
    }
}
