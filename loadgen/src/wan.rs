//! A WAN link in user space, for tests and benches on a kernel without
//! `netem`: a TCP relay that listens, connects each accepted connection to
//! a target, and forwards each direction with a fixed one-way delay and an
//! optional bandwidth cap. Bytes are released at their arrival time plus
//! the delay (plus, with a cap, their serialization time on the link), in
//! order, byte for byte; a half-close is passed on after the same delay.
//!
//! # What it does not reproduce
//! Both legs (client ↔ link, link ↔ target) are loopback TCP: their
//! handshakes, congestion windows and slow start happen at loopback speed.
//! Only the delay (and the cap) is emulated; a real long path's slow start,
//! its congestion window after idle, and its losses are not. A connect is
//! answered at once by the link, not one round trip later.
//!
//! # Backpressure
//! Each direction holds at most `buffer` bytes in its delay line (plus the
//! one read, of at most [`READ_CHUNK`] bytes, waiting for room): when it is
//! full the link stops reading, the kernel's buffers fill and TCP flow
//! control stops the sender. The link never throttles below `buffer` per
//! one-way delay (8 MiB per 20 ms by default: 400 MiB/s).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// The most one read takes off a socket.
pub const READ_CHUNK: usize = 64 * 1024;
/// Bytes held in each direction's delay line by default.
pub const DEFAULT_BUFFER: usize = 8 << 20;

/// How the link behaves.
#[derive(Clone, Debug)]
pub struct WanConfig {
    pub listen: SocketAddr,
    /// Where each accepted connection goes.
    pub target: SocketAddr,
    /// Added to each direction (the round trip gains twice this).
    pub delay: Duration,
    /// Bytes per second each direction carries at most (`None`: no cap).
    pub bandwidth: Option<u64>,
    /// Bytes each direction holds in its delay line at most.
    pub buffer: usize,
}

impl WanConfig {
    pub fn new(listen: SocketAddr, target: SocketAddr, delay: Duration) -> Self {
        WanConfig { listen, target, delay, bandwidth: None, buffer: DEFAULT_BUFFER }
    }
}

/// What the link carried.
#[derive(Default, Debug)]
pub struct WanStats {
    pub connections: AtomicU64,
    /// Connections to the target that failed (the client's is closed).
    pub connect_failures: AtomicU64,
    /// Bytes delivered, both directions together.
    pub bytes: AtomicU64,
    /// The most bytes one direction held in its delay line at once.
    pub peak_buffered: AtomicU64,
}

/// A running link; stops (closing every connection) on drop.
pub struct WanLink {
    addr: SocketAddr,
    stats: Arc<WanStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WanLink {
    /// Binds `cfg.listen` (port 0 picks one) and serves on a background
    /// thread with its own runtime.
    pub fn start(cfg: WanConfig) -> io::Result<WanLink> {
        if cfg.buffer < READ_CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer {} B is below one read ({READ_CHUNK} B); raise --buffer", cfg.buffer),
            ));
        }
        if cfg.bandwidth == Some(0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bandwidth 0 carries nothing; omit it for no cap"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wanlink")
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            let std = std::net::TcpListener::bind(cfg.listen)?;
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)?
        };
        let addr = listener.local_addr()?;
        let stats = Arc::new(WanStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let task_stats = stats.clone();
        let thread = std::thread::Builder::new().name("wanlink".into()).spawn(move || {
            runtime.block_on(accept_loop(listener, cfg, task_stats, stop_rx));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(WanLink { addr, stats, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &WanStats {
        &self.stats
    }

    /// Closes the listener and every connection; idempotent.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, cfg: WanConfig, stats: Arc<WanStats>, mut stop: oneshot::Receiver<()>) {
    let cfg = Arc::new(cfg);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let Ok((client, _)) = accepted else { continue };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, cfg.clone(), stats.clone()));
    }
}

/// One client connection: connects to the target, then forwards both
/// directions until each has ended.
async fn connection(client: TcpStream, cfg: Arc<WanConfig>, stats: Arc<WanStats>) {
    let server = match TcpStream::connect(cfg.target).await {
        Ok(s) => s,
        Err(_) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    tokio::join!(direction(client_r, server_w, &cfg, &stats), direction(server_r, client_w, &cfg, &stats));
}

/// Bytes read at `at`, or the end of the stream (`None`) seen at `at`.
struct Piece {
    at: Instant,
    bytes: Option<Vec<u8>>,
}

/// One direction: a reader that stamps what it reads with its arrival
/// time into the delay line, and a writer that releases each piece at its
/// due time. Ends when the stream ends (the half-close passed on) or either
/// side fails.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, cfg: &WanConfig, stats: &WanStats) {
    let room = Arc::new(Semaphore::new(cfg.buffer));
    let held = AtomicU64::new(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
    // With a cap, read about a millisecond's worth at a time so the link
    // releases bytes smoothly rather than in 64 KiB bursts.
    let chunk = match cfg.bandwidth {
        Some(bw) => (bw as usize / 1000).clamp(1500, READ_CHUNK),
        None => READ_CHUNK,
    };
    let reader = async {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Piece { at: Instant::now(), bytes: None });
                    return;
                }
                Ok(n) => n,
            };
            let at = Instant::now();
            // Backpressure: wait for room in the delay line.
            let Ok(permit) = room.acquire_many(n as u32).await else { return };
            permit.forget();
            let now = held.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            stats.peak_buffered.fetch_max(now, Ordering::Relaxed);
            if tx.send(Piece { at, bytes: Some(buf[..n].to_vec()) }).is_err() {
                return;
            }
        }
    };
    let writer = async {
        // With a cap: when the link finishes sending what it holds.
        let mut link_free = Instant::now();
        while let Some(piece) = rx.recv().await {
            let mut due = piece.at + cfg.delay;
            if let (Some(bw), Some(bytes)) = (cfg.bandwidth, &piece.bytes) {
                let start = link_free.max(piece.at);
                link_free = start + Duration::from_secs_f64(bytes.len() as f64 / bw as f64);
                due = link_free + cfg.delay;
            }
            tokio::time::sleep_until(due).await;
            let Some(bytes) = piece.bytes else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            held.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
            room.add_permits(bytes.len());
        }
    };
    // A writer that fails ends the direction (the reader with it); a
    // reader that ends leaves the writer to release what is in flight.
    tokio::pin!(reader);
    tokio::pin!(writer);
    tokio::select! {
        _ = &mut reader => (&mut writer).await,
        _ = &mut writer => {}
    }
}
