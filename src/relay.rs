//! One Agent connection, request after request: read a head, route it, take
//! a pooled TLS session (or open one), stream the request out, stream the
//! intake's answer back, give the session back.
//!
//! Every fault ends as one of three outcomes: a 4xx for a request that really
//! is malformed (nothing forwarded), a 502/503/504 the Agent retries when the
//! upstream side failed before any answer byte was sent, or a closed
//! connection when the answer was already under way (the Agent sees a network
//! error and retries). A session that carried a broken exchange is never
//! given back to the pool.
//!
//! # Backpressure
//! One buffer per direction, bounded; the relay reads from one side only
//! after the previous bytes were written to the other.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::sync::watch;

use crate::admin::{self, AdminCommand, AdminReply, Route};
use crate::buffers::BufferPool;
use crate::config::Config;
use crate::http1::{self, BodyFraming, ChunkedScanner, ClientConn, Method, RequestError, RequestHead};
use crate::io::{Backend, Stream};
use crate::metrics::{ErrorCause, StatsHub, WorkerStats};
use crate::route::{ProductRoute, RouteTable, UpstreamId, PRODUCTS};
use crate::status::StatusInfo;
use crate::upstream::pool::{Pool, PooledSession};
use crate::upstream::proxy::Hop;
use crate::upstream::{open_session, Directory, OpenError};

/// Read buffer per direction: one TLS record's worth of plaintext.
pub const IO_BUF: usize = 16 * 1024;
/// Read buffer of a connection waiting for its next request: Agent requests
/// up to this size still arrive in one read; larger ones borrow a pooled one.
pub const IDLE_BUF: usize = 4 * 1024;
/// Pooled buffers kept per worker between requests.
pub const MAX_FREE_BUFFERS: usize = 256;
/// Other addresses tried after a failed connect or handshake.
pub const CONNECT_RETRIES: usize = 3;

/// Lifecycle phase published by the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting, finish what was read, answer 503 at `deadline`.
    /// With `handover`, a restart in place: connections idle at a request
    /// boundary are handed to the next process instead of closed, and
    /// answers keep the connection alive.
    Draining {
        deadline: Instant,
        handover: bool,
    },
}

/// Everything a worker's connections share. Lives on one thread.
pub struct WorkerCtx<B: Backend> {
    pub id: usize,
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub directory: Arc<Directory>,
    pub tls: Arc<ClientConfig>,
    pub pool: RefCell<Pool<Hop<B::Stream>>>,
    /// I/O buffers lent to connections while they carry a request.
    pub buffers: RefCell<BufferPool>,
    pub stats: RefCell<WorkerStats>,
    pub hub: Arc<StatsHub>,
    pub info: Arc<StatusInfo>,
    pub phase: watch::Receiver<Phase>,
    /// Requests between a complete head and a complete answer.
    pub in_flight: Cell<usize>,
    pub connections: Cell<usize>,
    next_addr: Cell<usize>,
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
        WorkerCtx {
            id,
            pool: RefCell::new(Pool::new(n, config.max_idle_per_host, config.upstream_idle_timeout)),
            buffers: RefCell::new(BufferPool::new(MAX_FREE_BUFFERS)),
            stats: RefCell::new(WorkerStats::new(n)),
            config,
            routes,
            directory,
            tls,
            hub,
            info,
            phase,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            next_addr: Cell::new(0),
            handed_over,
        }
    }

    pub fn draining(&self) -> Option<Instant> {
        match *self.phase.borrow() {
            Phase::Running => None,
            Phase::Draining { deadline, .. } => Some(deadline),
        }
    }

    /// Resolves once the drain deadline has passed (never while running).
    async fn drain_deadline(&self) {
        let mut rx = self.phase.clone();
        loop {
            if let Phase::Draining { deadline, .. } = *rx.borrow_and_update() {
                tokio::time::sleep_until(deadline.into()).await;
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether this drain is a restart in place (connections handed over).
    pub fn handing_over(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Draining { handover: true, .. })
    }

    /// Resolves once draining starts.
    async fn drain_started(&self) {
        let mut rx = self.phase.clone();
        let _ = rx.wait_for(|p| *p != Phase::Running).await;
    }

    fn upstream_host(&self, id: UpstreamId) -> &str {
        &self.routes.upstreams[id].host
    }

    fn server_name(&self, id: UpstreamId) -> &str {
        self.config.server_name_for(self.upstream_host(id))
    }
}

/// Counts a connection as open for its product while alive.
struct ConnGuard<'a, B: Backend> {
    ctx: &'a WorkerCtx<B>,
    offset: u16,
}

impl<B: Backend> Drop for ConnGuard<'_, B> {
    fn drop(&mut self) {
        self.ctx.connections.set(self.ctx.connections.get() - 1);
        self.ctx.stats.borrow_mut().product(self.offset).open_connections -= 1;
    }
}

/// Counts a session as open for its upstream while alive.
struct SessionGuard<'a, B: Backend> {
    ctx: &'a WorkerCtx<B>,
    upstream: UpstreamId,
}

impl<B: Backend> Drop for SessionGuard<'_, B> {
    fn drop(&mut self) {
        self.ctx.stats.borrow_mut().upstreams[self.upstream].sessions_open -= 1;
    }
}

/// The Agent side of a connection: the socket and its read buffer.
struct Downstream<S: Stream> {
    io: S,
    /// Unconsumed input is `buf[start..]`. Between requests this is the small
    /// idle buffer; during a request with more input, a pooled one.
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// The idle buffer, kept here while `buf` is a pooled one.
    idle: Vec<u8>,
    /// How long a write to the Agent may stall (it stopped reading).
    write_timeout: Duration,
}

impl<S: Stream> Downstream<S> {
    fn filled(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more input; may move to a pooled buffer, and grow it up to
    /// `limit` bytes for an oversized head. `Ok(0)` at EOF.
    async fn fill(&mut self, limit: usize, pool: &RefCell<BufferPool>) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            if self.buf.capacity() <= IDLE_BUF {
                // More than the idle buffer holds: borrow a pooled one.
                self.borrow_big(pool);
            } else {
                let room = limit.saturating_sub(self.buf.capacity()).max(1);
                self.buf.reserve_exact(room.min(self.buf.capacity().max(IO_BUF)));
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = self.io.read(buf).await;
        self.buf = buf;
        let n = res?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Between requests: waits for the next request's first bytes, into the
    /// idle buffer. Cancel-safe (see [`Stream::read_ready`]): a drain or an
    /// idle timeout can abandon it without losing a byte of the next request.
    async fn fill_ready(&mut self) -> io::Result<usize> {
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(IDLE_BUF);
        }
        let n = self.io.read_ready(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Moves to a pooled buffer (body reads: a whole record per read).
    fn borrow_big(&mut self, pool: &RefCell<BufferPool>) {
        if self.buf.capacity() <= IDLE_BUF {
            let mut big = pool.borrow_mut().take();
            big.extend_from_slice(&self.buf[self.start..]);
            let mut idle = std::mem::replace(&mut self.buf, big);
            idle.clear();
            self.idle = idle;
            self.start = 0;
        }
    }

    /// Between requests: give a borrowed buffer back and wait on the idle one.
    fn park(&mut self, pool: &RefCell<BufferPool>) {
        if self.filled().is_empty() && self.buf.capacity() > IDLE_BUF && self.idle.capacity() > 0 {
            let big = std::mem::replace(&mut self.buf, std::mem::take(&mut self.idle));
            pool.borrow_mut().give_back(big);
            self.buf.clear();
            self.start = 0;
        }
    }

    async fn write(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let write = self.io.write_all(std::mem::take(out));
        let Ok((res, buf)) = tokio::time::timeout(self.write_timeout, write).await else {
            // The buffer stays with the cancelled operation; the connection is done.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the Agent stopped reading (limits.client_idle_timeout)",
            ));
        };
        *out = buf;
        out.clear();
        res
    }
}

/// How one request ended, for the connection loop.
enum Outcome {
    /// Answer complete; the connection may carry another request.
    KeepAlive,
    /// Close the connection (answered with `Connection: close`, or broken).
    Close,
    /// Draining started while the connection waited for its next request.
    Idle,
}

/// A failure after the head was parsed.
enum Failure {
    /// The Agent went away or broke the framing mid-body: close, answer nothing.
    Downstream(String),
    /// The request is refused by the relay itself (4xx), nothing forwarded upstream
    /// beyond what the session will never carry again.
    Refused(RequestError),
    /// The upstream side failed before the answer started: 502/503/504.
    Upstream { cause: ErrorCause, detail: String, addr: Option<SocketAddr> },
    /// The upstream side failed after the answer started: close.
    AnswerCut { cause: ErrorCause, detail: String },
}

/// Serves one accepted connection on port `offset` until it closes.
pub async fn serve<B: Backend>(ctx: Rc<WorkerCtx<B>>, io: B::Stream, offset: u16, peer: SocketAddr) {
    let _ = io.set_nodelay();
    ctx.connections.set(ctx.connections.get() + 1);
    ctx.stats.borrow_mut().product(offset).open_connections += 1;
    let _guard = ConnGuard { ctx: &ctx, offset };
    if ctx.connections.get() > ctx.config.max_connections {
        over_limit(&ctx, io, offset, peer).await;
        return;
    }
    let mut down = Downstream {
        io,
        buf: Vec::with_capacity(IDLE_BUF),
        start: 0,
        eof: false,
        idle: Vec::new(),
        write_timeout: ctx.config.client_idle_timeout,
    };
    let mut scratch = Vec::with_capacity(1024);
    let mut answer_buf: Vec<u8> = Vec::new();
    loop {
        down.park(&ctx.buffers);
        match serve_one(&ctx, &mut down, offset, peer, &mut scratch, &mut answer_buf).await {
            Outcome::KeepAlive if ctx.draining().is_none() => continue,
            Outcome::KeepAlive | Outcome::Idle if ctx.handing_over() && down.filled().is_empty() && !down.eof => {
                hand_over(&ctx, down, peer);
                return;
            }
            // Bytes of the next request already read: serve it first.
            Outcome::KeepAlive if ctx.handing_over() && !down.eof => continue,
            _ => break,
        }
    }
    let _ = down.io.shutdown_write();
    down.park(&ctx.buffers);
}

/// Restart in place: gives the connection, idle at a request boundary with
/// nothing of the next request read, to the next process. A duplicate of
/// the descriptor keeps the socket open; this side closes its own without
/// a shutdown, so the Agent sees nothing.
fn hand_over<B: Backend>(ctx: &WorkerCtx<B>, mut down: Downstream<B::Stream>, peer: SocketAddr) {
    down.park(&ctx.buffers);
    // SAFETY: dup of a descriptor this connection owns; the copy is owned below.
    let fd = unsafe { libc::fcntl(down.io.raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        tracing::warn!(%peer, error = %io::Error::last_os_error(), "cannot hand the connection over; closing it");
        let _ = down.io.shutdown_write();
        return;
    }
    // SAFETY: fd is a fresh duplicate owned by nothing else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ctx.handed_over.lock().unwrap_or_else(|e| e.into_inner()).push(owned);
    tracing::trace!(%peer, "idle connection handed over");
}

/// A connection beyond `limits.max_connections`: read what the Agent sends
/// (bounded by the header timeout and a small buffer), answer 503 so it
/// retries later, close. Nothing is forwarded.
async fn over_limit<B: Backend>(ctx: &WorkerCtx<B>, io: B::Stream, offset: u16, peer: SocketAddr) {
    let product = PRODUCTS[offset as usize].name;
    let mut down = Downstream {
        io,
        buf: Vec::with_capacity(2048),
        start: 0,
        eof: false,
        idle: Vec::new(),
        write_timeout: ctx.config.header_timeout,
    };
    let deadline = Instant::now() + ctx.config.header_timeout;
    while !down.filled().windows(4).any(|w| w == b"\r\n\r\n") && !down.eof && down.buf.len() < down.buf.capacity() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(tokio::time::timeout(left, down.fill(2048, &ctx.buffers)).await, Ok(Ok(n)) if n > 0) {
            break;
        }
    }
    ctx.stats.borrow_mut().record_error(offset, ErrorCause::Overloaded);
    tracing::warn!(product, %peer, limit = ctx.config.max_connections, "too many Agent connections on this worker; answered 503");
    let mut out = Vec::new();
    let body = format!(
        "fipsrelay: Service Unavailable (overloaded): more than {} connections on this worker (limits.max_connections)",
        ctx.config.max_connections
    );
    http1::local_response(503, &body, ClientConn::CLOSE, &mut out);
    let _ = down.write(&mut out).await;
    let _ = down.io.shutdown_write();
}

/// Reads one request head, handles the request, reports whether to go on.
async fn serve_one<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    scratch: &mut Vec<u8>,
    answer_buf: &mut Vec<u8>,
) -> Outcome {
    let cfg = &ctx.config;
    let product = PRODUCTS[offset as usize].name;
    let route = &ctx.routes.routes[offset as usize];
    // Wait for a complete head. Idle waits end on the idle timeout or at drain.
    let mut head_started: Option<Instant> = (!down.filled().is_empty()).then(Instant::now);
    // Bytes of a partial head already seen to hold no line end: a head is
    // parsed again only when a line was completed (or it grew past the
    // limit), so a client trickling bytes costs a scan of its new bytes,
    // not a parse of the whole head per byte.
    let mut scanned = 0;
    let head = loop {
        let filled = down.filled();
        let line_done = filled.get(scanned..).is_some_and(|new| new.contains(&b'\n'));
        scanned = filled.len();
        if line_done || filled.len() > cfg.max_header_bytes {
            let upstream_host = ctx.routes.upstream_for(offset, head_target(filled)).map(|id| ctx.upstream_host(id));
            match http1::parse_request(filled, cfg.max_header_bytes, cfg.max_body_bytes, upstream_host, scratch) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    refuse(ctx, down, offset, peer, &e, scratch).await;
                    return Outcome::Close;
                }
            }
        }
        if down.eof {
            if !down.filled().is_empty() {
                tracing::debug!(product, %peer, "client closed mid-head");
            }
            return Outcome::Close;
        }
        let idle = down.filled().is_empty();
        // Waiting for a new request: the idle timeout. Inside a head: what is
        // left of the header timeout, counted from its first byte (slowloris).
        let wait = match head_started {
            None => cfg.client_idle_timeout,
            Some(t) => cfg.header_timeout.saturating_sub(t.elapsed()),
        };
        let res = if idle {
            tokio::select! {
                r = tokio::time::timeout(wait, down.fill_ready()) => r,
                _ = ctx.drain_started() => return Outcome::Idle,
            }
        } else {
            tokio::time::timeout(wait, down.fill(cfg.max_header_bytes + 1, &ctx.buffers)).await
        };
        match res {
            Err(_) if idle => return Outcome::Close,
            Err(_) => {
                tracing::info!(product, %peer, timeout = ?cfg.header_timeout, "request head not complete within limits.header_timeout; answering 408");
                ctx.stats.borrow_mut().product(offset).refused += 1;
                let body = "request head not received in time (limits.header_timeout)";
                http1::local_response(408, body, ClientConn::CLOSE, scratch);
                let _ = down.write(scratch).await;
                return Outcome::Close;
            }
            Ok(Err(e)) => {
                tracing::debug!(product, %peer, error = %e, "client read failed");
                return Outcome::Close;
            }
            Ok(Ok(_)) => {
                if head_started.is_none() {
                    head_started = Some(Instant::now());
                }
            }
        }
    };
    down.consume(head.head_len);
    let started = Instant::now();
    ctx.in_flight.set(ctx.in_flight.get() + 1);
    let outcome = match route {
        ProductRoute::Status => answer_status(ctx, down, &head, scratch, peer).await,
        ProductRoute::Unconfigured { reason } => {
            // The body is read and dropped (bounded) so the connection can stay.
            let keep = drain_body(ctx, down, &head, &mut BodyProgress::new(head.framing)).await;
            let client = ClientConn { close: !keep, ..head.client() };
            fail_upstream(ctx, down, offset, peer, "(none)", ErrorCause::Unconfigured, reason, None, scratch, client)
                .await;
            if keep {
                Outcome::KeepAlive
            } else {
                Outcome::Close
            }
        }
        ProductRoute::Forward { .. } => {
            let upstream =
                ctx.routes.upstream_for(offset, head.target(scratch)).expect("forward route has an upstream");
            *answer_buf = ctx.buffers.borrow_mut().take();
            let mut body = BodyProgress::new(head.framing);
            let res = forward(ctx, down, offset, upstream, &head, scratch, answer_buf, &mut body).await;
            ctx.buffers.borrow_mut().give_back(std::mem::take(answer_buf));
            match res {
                Ok((status, keep)) => {
                    ctx.stats.borrow_mut().record_answer(offset, status, started.elapsed());
                    if keep {
                        Outcome::KeepAlive
                    } else {
                        Outcome::Close
                    }
                }
                Err(Failure::Downstream(why)) => {
                    tracing::info!(product, %peer, cause = %why, "client connection failed mid-request; upstream exchange abandoned");
                    Outcome::Close
                }
                Err(Failure::Refused(e)) => {
                    refuse(ctx, down, offset, peer, &e, scratch).await;
                    Outcome::Close
                }
                Err(Failure::Upstream { cause, detail, addr }) => {
                    let host = ctx.upstream_host(upstream);
                    // What is left of the body is read and dropped (bounded),
                    // so the connection can carry the Agent's retry.
                    let keep = drain_body(ctx, down, &head, &mut body).await;
                    let client = ClientConn { close: !keep, ..head.client() };
                    fail_upstream(ctx, down, offset, peer, host, cause, &detail, addr, scratch, client).await;
                    ctx.stats.borrow_mut().record_answer(offset, cause.status(), started.elapsed());
                    if keep {
                        Outcome::KeepAlive
                    } else {
                        Outcome::Close
                    }
                }
                Err(Failure::AnswerCut { cause, detail }) => {
                    ctx.stats.borrow_mut().record_error(offset, cause);
                    tracing::warn!(
                        product,
                        upstream = ctx.upstream_host(upstream),
                        cause = cause.label(),
                        error = %detail,
                        "answer cut short by the intake; closing the client connection so the Agent retries"
                    );
                    Outcome::Close
                }
            }
        }
    };
    ctx.in_flight.set(ctx.in_flight.get() - 1);
    outcome
}

/// The request target of a (possibly partial) head, for routing before parse.
fn head_target(buf: &[u8]) -> &[u8] {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    parts.next();
    parts.next().unwrap_or(b"/")
}

async fn refuse<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    e: &RequestError,
    scratch: &mut Vec<u8>,
) {
    let status = e.status();
    tracing::warn!(product = PRODUCTS[offset as usize].name, %peer, status, reason = %e, "request refused");
    {
        let mut st = ctx.stats.borrow_mut();
        st.product(offset).refused += 1;
        st.record_answer(offset, status, Duration::ZERO);
    }
    http1::local_response(status, &e.to_string(), ClientConn::CLOSE, scratch);
    let _ = down.write(scratch).await;
}

/// The most of an unforwarded request body [`drain_body`] reads to keep the
/// connection; a larger rest closes it instead.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;
/// How long [`drain_body`] waits for the rest of a body.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of a request body that will not be
/// forwarded (the relay answers it itself), so that the connection can carry
/// the next request. True when the body ended within [`DRAIN_LIMIT`] bytes
/// and [`DRAIN_TIME`]; false when the connection must close instead: the
/// client asked to close, waits for `100 Continue`, sent too much or too
/// slowly, framed it badly, or the relay is draining.
///
/// # Backpressure
/// Reads through the connection's own buffer, bounded in bytes and time.
async fn drain_body<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
    body: &mut BodyProgress,
) -> bool {
    if head.close || (ctx.draining().is_some() && !ctx.handing_over()) {
        return false;
    }
    if body.done() {
        return true;
    }
    // A client waiting for 100 Continue may never send the body.
    if head.expect_continue || body.left().is_some_and(|left| left > DRAIN_LIMIT) {
        return false;
    }
    let deadline = Instant::now() + DRAIN_TIME;
    let mut drained: u64 = 0;
    loop {
        if !down.filled().is_empty() {
            let Ok(n) = body.take(down.filled(), usize::MAX, ctx.config.max_body_bytes) else { return false };
            down.consume(n);
            drained += n as u64;
            if body.done() {
                return true;
            }
            if drained > DRAIN_LIMIT {
                return false;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || read_body(down, left, &ctx.buffers).await.is_err() {
            return false;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fail_upstream<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    host: &str,
    cause: ErrorCause,
    detail: &str,
    addr: Option<SocketAddr>,
    scratch: &mut Vec<u8>,
    client: ClientConn,
) {
    let status = cause.status();
    let product = PRODUCTS[offset as usize].name;
    ctx.stats.borrow_mut().record_error(offset, cause);
    let addr_text = addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    tracing::warn!(product, upstream = host, addr = %addr_text, cause = cause.label(), status, %peer, error = %detail, "upstream failure answered for retry");
    let body = format!("fipsrelay: {} ({}) for {}: {}", http1::reason(status), cause.label(), host, detail);
    http1::local_response(status, &body, client, scratch);
    let _ = down.write(scratch).await;
}

async fn answer_status<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    peer: SocketAddr,
) -> Outcome {
    if admin::is_admin_target(head.target(scratch)) {
        return answer_admin(ctx, down, head, scratch, peer).await;
    }
    let method_ok = matches!(head.method, Method::Get | Method::Head);
    // A body (never used here) is read and dropped, bounded, so the
    // connection can stay; when it cannot be, the connection closes.
    let keep = drain_body(ctx, down, head, &mut BodyProgress::new(head.framing)).await;
    let client = ClientConn { close: !keep, ..head.client() };
    let (status, ctype, body) = if !method_ok {
        (405, "text/plain; charset=utf-8", "the status port is read-only: use GET\n".to_string())
    } else {
        crate::status::render(head.target(scratch), &ctx.info, &ctx.hub)
    };
    scratch.clear();
    scratch.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
            status,
            http1::reason(status),
            ctype,
            body.len(),
            client.connection_field()
        )
        .as_bytes(),
    );
    if head.method != Method::Head {
        scratch.extend_from_slice(body.as_bytes());
    }
    if down.write(scratch).await.is_err() || client.close {
        return Outcome::Close;
    }
    Outcome::KeepAlive
}

/// `/admin/*` on the status port: read the small body, check the bearer
/// token, hand the command to the control loop, answer. The connection
/// stays open after an answer to a request whose body was read to its end
/// (unless the client asked to close, or it was a drain); it closes after a
/// body that could not be read. `scratch` holds the rendered head.
async fn answer_admin<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    peer: SocketAddr,
) -> Outcome {
    let access = &ctx.info.admin;
    // Kept open once the body is read; closed when it cannot be.
    let keep = ClientConn { close: head.close || (ctx.draining().is_some() && !ctx.handing_over()), ..head.client() };
    let Some(token) = &access.token else {
        let reply = AdminReply::new(
            404,
            "not found: the admin API is off (admin.enabled = false, or no token file could be created at start: see the start log)",
        );
        let client = if head.framing == BodyFraming::None { keep } else { ClientConn { close: true, ..keep } };
        return send_admin(down, &reply, &[], client, scratch).await;
    };
    let req = admin::inspect(scratch, token);
    let body = match read_admin_body(ctx, down, head).await {
        Ok(body) => body,
        Err(reply) => return send_admin(down, &reply, &[], ClientConn { close: true, ..keep }, scratch).await,
    };
    if !req.authorized {
        tracing::warn!(%peer, route = %req.path, "admin request refused: missing or wrong bearer token");
        let reply = AdminReply::new(401, "unauthorized: send Authorization: Bearer <the token in admin.token_file>");
        return send_admin(down, &reply, &[("WWW-Authenticate", "Bearer")], keep, scratch).await;
    }
    let reply = match req.route {
        Route::Drain => {
            let reply = AdminReply::new(
                202,
                format!(
                    "draining: no new connections; requests in flight get up to {:?} (shutdown.drain_timeout), then fipsrelay exits",
                    ctx.config.drain_timeout
                ),
            );
            // The answer goes out first: draining closes this worker's connections.
            send_admin(down, &reply, &[], ClientConn { close: true, ..keep }, scratch).await;
            if access.commands.send(AdminCommand::Drain { peer }).is_err() {
                tracing::warn!(%peer, "admin drain request dropped: the control loop is already stopping");
            }
            return Outcome::Close;
        }
        Route::LogLevel => match String::from_utf8(body) {
            Ok(directive) => {
                admin::ask_control(access, |reply| AdminCommand::SetLogLevel { peer, directive, reply }).await
            }
            Err(_) => AdminReply::new(400, "the log level must be UTF-8 text such as debug or info,fipsrelay=debug"),
        },
        Route::Reload => admin::ask_control(access, |reply| AdminCommand::Reload { peer, reply }).await,
        Route::WrongMethod { allow } => {
            let reply = AdminReply::new(405, format!("{} takes {allow}", req.path));
            return send_admin(down, &reply, &[("Allow", allow)], keep, scratch).await;
        }
        Route::NotFound => AdminReply::new(
            404,
            format!(
                "unknown admin route {}: use POST /admin/drain, PUT /admin/log-level or POST /admin/reload",
                req.path
            ),
        ),
    };
    send_admin(down, &reply, &[], keep, scratch).await
}

/// Reads an admin request body: Content-Length only, at most `admin::MAX_BODY`.
async fn read_admin_body<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
) -> Result<Vec<u8>, AdminReply> {
    let len = match head.framing {
        BodyFraming::None | BodyFraming::UntilClose => return Ok(Vec::new()),
        BodyFraming::Chunked => {
            return Err(AdminReply::new(
                400,
                format!(
                    "chunked bodies are not accepted on the admin API: send Content-Length (at most {} bytes)",
                    admin::MAX_BODY
                ),
            ))
        }
        BodyFraming::Length(n) if n > admin::MAX_BODY => {
            return Err(AdminReply::new(
                413,
                format!("admin request body of {n} bytes is over {} bytes", admin::MAX_BODY),
            ))
        }
        BodyFraming::Length(n) => n as usize,
    };
    if head.expect_continue && down.filled().len() < len {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        if down.write(&mut cont).await.is_err() {
            return Err(AdminReply::new(400, "the client went away"));
        }
    }
    let deadline = Instant::now() + ctx.config.header_timeout;
    while down.filled().len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, down.fill(IO_BUF, &ctx.buffers)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(AdminReply::new(400, "the request body ended early")),
            Err(_) => return Err(AdminReply::new(408, "request body not received in time (limits.header_timeout)")),
        }
    }
    let body = down.filled()[..len].to_vec();
    down.consume(len);
    Ok(body)
}

/// Writes an admin answer. `client.close` decides whether the connection
/// stays: only after a body that was read to its end.
async fn send_admin<S: Stream>(
    down: &mut Downstream<S>,
    reply: &AdminReply,
    extra: &[(&str, &str)],
    client: ClientConn,
    scratch: &mut Vec<u8>,
) -> Outcome {
    admin::render(reply, extra, client, scratch);
    if down.write(scratch).await.is_err() || client.close {
        return Outcome::Close;
    }
    Outcome::KeepAlive
}

/// Takes a live pooled session or opens a new one.
async fn acquire<B: Backend>(
    ctx: &WorkerCtx<B>,
    offset: u16,
    upstream: UpstreamId,
    allow_pooled: bool,
) -> Result<(PooledSession<Hop<B::Stream>>, bool), Failure> {
    if allow_pooled {
        let (session, dropped) = ctx.pool.borrow_mut().take(upstream, Instant::now());
        let mut st = ctx.stats.borrow_mut();
        st.upstreams[upstream].sessions_open -= dropped as i64;
        st.upstreams[upstream].sessions_idle -= dropped as i64;
        if let Some(s) = session {
            st.upstreams[upstream].sessions_idle -= 1;
            st.product(offset).pool_hits += 1;
            return Ok((s, true));
        }
        st.product(offset).pool_misses += 1;
    }
    let resolved = ctx.directory.get(upstream);
    if resolved.endpoints.is_empty() {
        return Err(Failure::Upstream {
            cause: ErrorCause::Unresolved,
            detail: OpenError::NoAddress {
                host: ctx.upstream_host(upstream).to_string(),
                why: resolved.error.clone().unwrap_or_else(|| "no address".into()),
            }
            .to_string(),
            addr: None,
        });
    }
    // Round-robin over the host's addresses that are up; a failed connect or
    // handshake (nothing of the request written yet) moves on to the next
    // one, up to CONNECT_RETRIES more times (like HAProxy's retries +
    // redispatch), and counts against the address's health at once.
    let n = resolved.endpoints.len();
    let all_down = || Failure::Upstream {
        cause: ErrorCause::Down,
        detail: format!("all {n} addresses of {} are down", ctx.upstream_host(upstream)),
        addr: None,
    };
    let up = resolved.up_count();
    let first = ctx.next_addr.get();
    ctx.next_addr.set(first.wrapping_add(1));
    if up == 0 {
        // Panic mode: no address is up. One request at a time per host,
        // PANIC_PROBE_EVERY apart, still tries a real connect and handshake,
        // so a blip of the intake ends as soon as it listens again instead
        // of waiting for the checks; every other request gets 503 at once.
        let probe = if ctx.directory.health.enabled { ctx.directory.take_panic_probe(upstream) } else { None };
        let Some(_probe) = probe else { return Err(all_down()) };
        let endpoint = &resolved.endpoints[first % n];
        let addr = endpoint.addr;
        // Connect and handshake together within upstream.connect_timeout:
        // no request waits longer than that while the host is down.
        let limit = ctx.config.connect_timeout;
        let opened = tokio::time::timeout(
            limit,
            open_session::<B>(ctx.directory.dial(upstream, addr), ctx.tls.clone(), ctx.server_name(upstream), limit),
        )
        .await
        .unwrap_or(Err(OpenError::ConnectTimeout { addr, after: limit }));
        return match opened {
            Ok(mut s) => {
                ctx.directory.revived(upstream, endpoint);
                s.endpoint = Some(endpoint.clone());
                ctx.stats.borrow_mut().upstreams[upstream].sessions_open += 1;
                tracing::debug!(upstream = ctx.upstream_host(upstream), %addr, "panic probe connected");
                Ok((s, false))
            }
            Err(e) => {
                ctx.directory.connect_failed(upstream, endpoint, &e);
                Err(Failure::Upstream { cause: open_error_cause(&e), detail: e.to_string(), addr: e.addr() })
            }
        };
    }
    let attempts = up.min(1 + CONNECT_RETRIES);
    // Stays so if every address goes down while the others are tried.
    let mut failure = all_down();
    let mut tried = 0;
    for k in 0..n {
        if tried == attempts {
            break;
        }
        let endpoint = &resolved.endpoints[(first + k) % n];
        if !endpoint.is_up() {
            continue;
        }
        tried += 1;
        let addr = endpoint.addr;
        let dial = ctx.directory.dial(upstream, addr);
        match open_session::<B>(dial, ctx.tls.clone(), ctx.server_name(upstream), ctx.config.connect_timeout).await {
            Ok(mut s) => {
                endpoint.connected();
                s.endpoint = Some(endpoint.clone());
                ctx.stats.borrow_mut().upstreams[upstream].sessions_open += 1;
                tracing::debug!(upstream = ctx.upstream_host(upstream), %addr, tls = %s.session.describe(), "upstream session opened");
                return Ok((s, false));
            }
            Err(e) => {
                ctx.directory.connect_failed(upstream, endpoint, &e);
                let cause = open_error_cause(&e);
                if tried < attempts {
                    ctx.stats.borrow_mut().record_error(offset, cause);
                    tracing::warn!(product = PRODUCTS[offset as usize].name, upstream = ctx.upstream_host(upstream), %addr, cause = cause.label(), error = %e, "upstream address failed; trying the next one");
                }
                failure = Failure::Upstream { cause, detail: e.to_string(), addr: e.addr() };
            }
        }
    }
    Err(failure)
}

/// The error cause (status code and metric) of a failed connect or handshake.
fn open_error_cause(e: &OpenError) -> ErrorCause {
    match e {
        OpenError::NoAddress { .. } => ErrorCause::Unresolved,
        OpenError::Connect { .. } => ErrorCause::Connect,
        OpenError::ConnectTimeout { .. } => ErrorCause::ConnectTimeout,
        OpenError::Tls { .. }
        | OpenError::TlsTimeout { .. }
        | OpenError::TunnelTls { .. }
        | OpenError::TunnelTlsTimeout { .. } => ErrorCause::Tls,
        OpenError::Proxy { .. } => ErrorCause::Proxy,
    }
}

/// Relays one request and its answer. Returns the status sent and whether
/// the Agent connection may be reused.
#[allow(clippy::too_many_arguments)]
async fn forward<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    upstream: UpstreamId,
    head: &RequestHead,
    upstream_head: &mut Vec<u8>,
    answer_buf: &mut Vec<u8>,
    body: &mut BodyProgress,
) -> Result<(u16, bool), Failure> {
    // The body bytes that came with the head ride in the same TLS record and
    // write as the head (one upstream write for a typical Agent request).
    if !head.expect_continue {
        let n = body.take(down.filled(), IO_BUF, ctx.config.max_body_bytes)?;
        upstream_head.extend_from_slice(&down.filled()[..n]);
        down.consume(n);
    }

    // Send it on a pooled session first; if that one turns out dead before
    // any byte was written, once more on a fresh session.
    let mut allow_pooled = true;
    let mut pooled = loop {
        let (mut s, reused) = acquire(ctx, offset, upstream, allow_pooled).await?;
        match write_upstream(&mut s, upstream_head, ctx.config.response_timeout).await {
            Ok(()) => break s,
            Err(e) if reused && allow_pooled => {
                tracing::debug!(upstream = ctx.upstream_host(upstream), error = %e, "pooled session dead on first write; retrying on a new one");
                drop(SessionGuard { ctx, upstream });
                allow_pooled = false;
            }
            Err(e) => {
                drop(SessionGuard { ctx, upstream });
                return Err(Failure::Upstream { cause: ErrorCause::Write, detail: e.to_string(), addr: Some(s.addr) });
            }
        }
    };
    // From here the session is counted open until it is given back or dropped.
    let guard = SessionGuard { ctx, upstream };
    let addr = pooled.addr;

    if head.expect_continue && !body.done() {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        down.write(&mut cont).await.map_err(|e| Failure::Downstream(e.to_string()))?;
    }

    // Stream the rest of the body.
    let idle = ctx.config.client_idle_timeout;
    while !body.done() {
        if down.filled().is_empty() {
            read_body(down, idle, &ctx.buffers).await?;
        }
        let n = body.take(down.filled(), usize::MAX, ctx.config.max_body_bytes)?;
        let written = write_upstream(&mut pooled, &down.filled()[..n], ctx.config.response_timeout).await;
        // Consumed whether or not the write worked: `body` already counted
        // these bytes, and a drain after a failure must not read them again
        // (nor take the body's tail for the next request).
        down.consume(n);
        written.map_err(|e| Failure::Upstream { cause: ErrorCause::Write, detail: e.to_string(), addr: Some(addr) })?;
    }
    let body_bytes = body.payload();
    ctx.stats.borrow_mut().product(offset).bytes_in += body_bytes;

    // Wait for the answer head, bounded by the response timeout and the drain deadline.
    let client = ClientConn { close: head.close || (ctx.draining().is_some() && !ctx.handing_over()), ..head.client() };
    answer_buf.clear();
    let head_limit = ctx.config.max_header_bytes;
    let read_head = async {
        loop {
            if !answer_buf.is_empty() {
                match http1::parse_response(answer_buf, head_limit, head.method, client, upstream_head) {
                    Ok(Some(h)) if (100..200).contains(&h.status) => {
                        if h.status == 101 {
                            return Err((ErrorCause::BadAnswer, "the intake switched protocols".to_string()));
                        }
                        answer_buf.drain(..h.head_len);
                        continue;
                    }
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err((ErrorCause::BadAnswer, e.to_string())),
                }
            }
            if answer_buf.len() == answer_buf.capacity() {
                answer_buf.reserve(IO_BUF.min(head_limit));
            }
            match pooled.session.read_plain(answer_buf).await {
                Ok(0) => return Err((ErrorCause::Closed, "the intake closed the connection before answering".into())),
                Ok(_) => {}
                Err(e) => {
                    return Err((ErrorCause::Closed, format!("the intake connection failed before answering: {e}")))
                }
            }
        }
    };
    let answer_head = tokio::select! {
        r = tokio::time::timeout(ctx.config.response_timeout, read_head) => match r {
            Ok(Ok(h)) => h,
            Ok(Err((cause, detail))) => return Err(Failure::Upstream { cause, detail, addr: Some(addr) }),
            Err(_) => return Err(Failure::Upstream {
                cause: ErrorCause::Timeout,
                detail: format!("no answer within upstream.response_timeout ({:?})", ctx.config.response_timeout),
                addr: Some(addr),
            }),
        },
        _ = ctx.drain_deadline() => return Err(Failure::Upstream {
            cause: ErrorCause::Draining,
            detail: "the relay is shutting down and its drain timeout passed".into(),
            addr: Some(addr),
        }),
    };
    answer_buf.drain(..answer_head.head_len);

    // Stream the answer; the head goes out with the first body bytes.
    let mut answer = AnswerOut { head: upstream_head, head_pending: true };
    let mut sent: u64 = 0;
    let complete = match answer_head.framing {
        BodyFraming::None => answer_buf.is_empty(),
        BodyFraming::Length(total) => loop {
            let n = ((total - sent) as usize).min(answer_buf.len());
            let extra = answer_buf.len() - n;
            sent += n as u64;
            answer.send(down, answer_buf, n).await?;
            if extra > 0 {
                break false; // bytes after the answer: the session is confused
            }
            if sent == total {
                break true;
            }
            read_answer(&mut pooled, answer_buf, ctx.config.response_timeout)
                .await
                .map_err(|(c, d)| answer.fail(c, d, addr))?;
        },
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::new();
            loop {
                // An HTTP/1.0 Agent gets the payload decoded; the close ends it.
                let (n, out) = if answer_head.dechunk {
                    scanner.dechunk(answer_buf)
                } else {
                    scanner.scan(answer_buf).map(|n| (n, n))
                }
                .map_err(|e| answer.fail(ErrorCause::BadAnswer, e.to_string(), addr))?;
                let extra = answer_buf.len() - n;
                answer.send(down, answer_buf, out).await?;
                if scanner.is_done() {
                    sent = scanner.payload;
                    break extra == 0;
                }
                read_answer(&mut pooled, answer_buf, ctx.config.response_timeout)
                    .await
                    .map_err(|(c, d)| answer.fail(c, d, addr))?;
            }
        }
        BodyFraming::UntilClose => loop {
            sent += answer_buf.len() as u64;
            let n = answer_buf.len();
            answer.send(down, answer_buf, n).await?;
            match read_answer(&mut pooled, answer_buf, ctx.config.response_timeout).await {
                Ok(()) => {}
                Err((ErrorCause::Closed, _)) => break false,
                Err((c, d)) => return Err(answer.fail(c, d, addr)),
            }
        },
    };
    answer.finish(down).await?;
    ctx.stats.borrow_mut().product(offset).bytes_out += sent;

    // As the rendered head announced it.
    let keep_client = !answer_head.client.close;
    if complete && !answer_head.upstream_close {
        let given = ctx.pool.borrow_mut().give_back(upstream, pooled, Instant::now());
        if given {
            ctx.stats.borrow_mut().upstreams[upstream].sessions_idle += 1;
            std::mem::forget(guard); // still open, now idle in the pool
        }
    }
    Ok((answer_head.status, keep_client))
}

/// Where a request body stands: how much is left, or the chunked scanner.
enum BodyProgress {
    Length { left: u64, total: u64 },
    Chunked(ChunkedScanner),
}

impl BodyProgress {
    fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Length(n) => BodyProgress::Length { left: n, total: n },
            BodyFraming::Chunked => BodyProgress::Chunked(ChunkedScanner::new()),
            BodyFraming::None | BodyFraming::UntilClose => BodyProgress::Length { left: 0, total: 0 },
        }
    }

    fn done(&self) -> bool {
        match self {
            BodyProgress::Length { left, .. } => *left == 0,
            BodyProgress::Chunked(s) => s.is_done(),
        }
    }

    /// How many bytes of `input` (at most `max`) belong to the body; counts them as sent.
    fn take(&mut self, input: &[u8], max: usize, max_body: u64) -> Result<usize, Failure> {
        let input = &input[..input.len().min(max)];
        match self {
            BodyProgress::Length { left, .. } => {
                let n = (*left as usize).min(input.len());
                *left -= n as u64;
                Ok(n)
            }
            BodyProgress::Chunked(scanner) => {
                let n = scanner.scan(input).map_err(|e| Failure::Refused(RequestError::Chunked(e)))?;
                if scanner.payload > max_body {
                    return Err(Failure::Refused(RequestError::BodyTooLarge { len: scanner.payload, limit: max_body }));
                }
                Ok(n)
            }
        }
    }

    fn payload(&self) -> u64 {
        match self {
            BodyProgress::Length { total, .. } => *total,
            BodyProgress::Chunked(s) => s.payload,
        }
    }

    /// Bytes still to come, when the framing says (Content-Length).
    fn left(&self) -> Option<u64> {
        match self {
            BodyProgress::Length { left, .. } => Some(*left),
            BodyProgress::Chunked(_) => None,
        }
    }
}

/// The answer head, held back until the first body bytes can go with it.
struct AnswerOut<'a> {
    head: &'a mut Vec<u8>,
    head_pending: bool,
}

impl AnswerOut<'_> {
    /// An upstream failure mid-answer: while nothing has reached the Agent
    /// yet it can still get a status it retries; after that, only a cut.
    fn fail(&self, cause: ErrorCause, detail: String, addr: SocketAddr) -> Failure {
        if self.head_pending {
            Failure::Upstream { cause, detail, addr: Some(addr) }
        } else {
            Failure::AnswerCut { cause, detail }
        }
    }

    /// Sends `body[..n]` (after the head, the first time) and empties `body`.
    /// With no body bytes the head stays back: see [`AnswerOut::finish`].
    async fn send<S: Stream>(&mut self, down: &mut Downstream<S>, body: &mut Vec<u8>, n: usize) -> Result<(), Failure> {
        let res = if n == 0 {
            Ok(())
        } else if self.head_pending {
            self.head_pending = false;
            self.head.extend_from_slice(&body[..n]);
            down.write(self.head).await
        } else {
            body.truncate(n);
            down.write(body).await
        };
        body.clear();
        res.map_err(|e| Failure::Downstream(e.to_string()))
    }

    /// Sends the head if no body byte carried it (empty bodies).
    async fn finish<S: Stream>(&mut self, down: &mut Downstream<S>) -> Result<(), Failure> {
        if !self.head_pending {
            return Ok(());
        }
        self.head_pending = false;
        down.write(self.head).await.map_err(|e| Failure::Downstream(e.to_string()))
    }
}

/// Encrypts and writes to the intake; a write stalled longer than `timeout`
/// (the intake stopped reading) fails.
async fn write_upstream<S: Stream>(pooled: &mut PooledSession<S>, data: &[u8], timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, pooled.session.write_plain(data)).await {
        Ok(res) => res,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the intake stopped reading the request for {timeout:?} (upstream.response_timeout)"),
        )),
    }
}

async fn read_body<S: Stream>(
    down: &mut Downstream<S>,
    idle: Duration,
    pool: &RefCell<BufferPool>,
) -> Result<(), Failure> {
    down.borrow_big(pool);
    match tokio::time::timeout(idle, down.fill(IO_BUF, pool)).await {
        Err(_) => Err(Failure::Downstream("client stopped sending the body".into())),
        Ok(Err(e)) => Err(Failure::Downstream(e.to_string())),
        Ok(Ok(0)) => Err(Failure::Downstream("client closed mid-body".into())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Reads more of the answer body (buffer emptied by the caller first).
async fn read_answer<S: Stream>(
    pooled: &mut PooledSession<S>,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), (ErrorCause, String)> {
    buf.clear();
    match tokio::time::timeout(timeout, pooled.session.read_plain(buf)).await {
        Err(_) => Err((ErrorCause::Timeout, "the intake stopped sending its answer".into())),
        Ok(Err(e)) => Err((ErrorCause::Closed, format!("the intake connection failed mid-answer: {e}"))),
        Ok(Ok(0)) => Err((ErrorCause::Closed, "the intake closed the connection mid-answer".into())),
        Ok(Ok(_)) => Ok(()),
    }
}
