//! One Agent connection, request after request: read a head, route it
//! once, answer it locally or relay it to the intake, and answer every
//! failure as the Agent needs (DESIGN §1).
//!
//! The request path reads top to bottom: this file holds the Agent
//! connection's loop (read a head, route, refuse, drain, hand over) on the
//! worker's state ([`WorkerCtx`]); [`downstream`] the Agent socket and its
//! buffers; [`local`] the answers the relay gives itself (status pages,
//! admin API); [`exchange`] one exchange with the intake, over HTTP/1.1
//! ([`exchange::h1`]) or HTTP/2 ([`exchange::h2`]); [`error`] the one
//! relay error that decides the status, the metric and the log fields.
//!
//! Every fault ends as one of three outcomes: a 4xx for a request that really
//! is malformed (nothing forwarded, or, for a chunked body found bad on the
//! way, a session that is never used again), a 502/503/504 the Agent retries when the
//! upstream side failed before any answer byte was sent, or a closed
//! connection when the answer was already under way (the Agent sees a network
//! error and retries). A session that carried a broken exchange is never
//! given back to the pool.
//!
//! # Backpressure
//! One buffer per direction, bounded; the relay reads from one side only
//! after the previous bytes were written to the other.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::STATUS_CONNECTIONS_PER_WORKER;
use crate::fault::Cause;
use crate::http1::{self, ClientConn, RequestError, RequestHead};
use crate::io::{Backend, Stream};
use crate::logging::summary::{About, Event};
use crate::route::{ProductRoute, UpstreamId, PRODUCTS, STATUS_OFFSET};
use crate::worker::ctx::WorkerCtx;

mod downstream;
pub mod error;
mod exchange;
mod local;

use downstream::Downstream;
use error::{RelayError, UpstreamFault};
use exchange::{forward, read_body, BodyProgress, Exchange};
use local::answer_status;

/// How long a connection refused for being over its limit may hold its
/// descriptor after the 503: to read what the client already sent.
const OVER_LIMIT_LINGER: Duration = Duration::from_millis(100);

/// Read buffer per direction: one TLS record's worth of plaintext.
pub const IO_BUF: usize = 16 * 1024;
/// Read buffer of a connection waiting for its next request: Agent requests
/// up to this size still arrive in one read; larger ones borrow a pooled one.
pub const IDLE_BUF: usize = 4 * 1024;

// The lines of events that repeat per request or connection: the first
// after a quiet period is logged, the rest counted and summarised
// (`logging::summary`).
const OVER_LIMIT: &str = "too many connections on this worker; answered 503 at once and closed";
const HEAD_TIMEOUT: &str = "request head not complete within limits.header_timeout; answering 408";
const ANSWER_CUT: &str = "answer cut short by the intake; closing the client connection so the Agent retries";
const UPSTREAM_FAILURE: &str = "upstream failure answered for retry";
const REFUSED: &str = "request refused";

/// Counts a connection as open for its product while alive, in the
/// worker's Agent count or, on the status port, in its own.
struct ConnGuard<'a, B: Backend> {
    ctx: &'a WorkerCtx<B>,
    offset: u16,
}

impl<'a, B: Backend> ConnGuard<'a, B> {
    fn open(ctx: &'a WorkerCtx<B>, offset: u16) -> Self {
        let count = Self::count(ctx, offset);
        count.set(count.get() + 1);
        ctx.touch();
        ctx.stats.borrow_mut().product(offset).open_connections += 1;
        ConnGuard { ctx, offset }
    }

    fn count(ctx: &WorkerCtx<B>, offset: u16) -> &std::cell::Cell<usize> {
        if offset == STATUS_OFFSET {
            &ctx.status_connections
        } else {
            &ctx.connections
        }
    }

    /// The limit this connection counts against, and the key that sets it.
    fn limit(&self) -> (usize, &'static str) {
        if self.offset == STATUS_OFFSET {
            (STATUS_CONNECTIONS_PER_WORKER, "the status port's own reserve")
        } else {
            (self.ctx.config.max_connections, "limits.max_connections")
        }
    }

    fn over_limit(&self) -> bool {
        Self::count(self.ctx, self.offset).get() > self.limit().0
    }
}

impl<B: Backend> Drop for ConnGuard<'_, B> {
    fn drop(&mut self) {
        let count = Self::count(self.ctx, self.offset);
        count.set(count.get() - 1);
        self.ctx.touch();
        self.ctx.stats.borrow_mut().product(self.offset).open_connections -= 1;
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

impl Outcome {
    fn keep_if(keep: bool) -> Outcome {
        if keep {
            Outcome::KeepAlive
        } else {
            Outcome::Close
        }
    }
}

/// Serves one accepted connection on port `offset` until it closes.
pub async fn serve<B: Backend>(ctx: Rc<WorkerCtx<B>>, io: B::Stream, offset: u16, peer: SocketAddr) {
    let _ = io.set_nodelay();
    let guard = ConnGuard::open(&ctx, offset);
    if guard.over_limit() {
        over_limit(&ctx, io, offset, peer, guard.limit()).await;
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
                // The abandoned wait's read (io_uring) may hold the first
                // bytes of the next request: then serve it here first.
                match down.disarm().await {
                    Ok(0) => {
                        hand_over(&ctx, down, peer);
                        return;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
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

/// A connection beyond its limit (`limits.max_connections` for the Agent's
/// ports, [`STATUS_CONNECTIONS_PER_WORKER`] for the status port): 503 at
/// once, without waiting for the request head, so the Agent retries later
/// and the descriptor is given back within [`OVER_LIMIT_LINGER`], not
/// `limits.header_timeout`. Nothing is forwarded.
///
/// # Invariants
/// After the 503 and the FIN, the relay reads (and drops) what the client
/// sent, at most [`OVER_LIMIT_LINGER`] and one small buffer, so that a
/// request already on its way does not turn the close into a reset that
/// could hide the 503 from the client.
async fn over_limit<B: Backend>(
    ctx: &WorkerCtx<B>,
    io: B::Stream,
    offset: u16,
    peer: SocketAddr,
    (limit, key): (usize, &'static str),
) {
    let product = PRODUCTS[offset as usize].name;
    let mut down = Downstream {
        io,
        buf: Vec::with_capacity(2048),
        start: 0,
        eof: false,
        idle: Vec::new(),
        write_timeout: OVER_LIMIT_LINGER,
    };
    ctx.stats.borrow_mut().record_error(offset, Cause::Overloaded);
    let event = Event { what: OVER_LIMIT, product, about: About::Product, cause: Cause::Overloaded.label() };
    crate::count_or_log!(warn, ctx.log, event, || format!("from {peer}"), product, %peer, limit, key, "{OVER_LIMIT}");
    let mut out = Vec::new();
    let body =
        format!("fipsrelay: Service Unavailable (overloaded): more than {limit} connections on this worker ({key})");
    http1::local_response(503, &body, ClientConn::CLOSE, &mut out);
    if down.write(&mut out).await.is_err() {
        return;
    }
    let _ = down.io.shutdown_write();
    let deadline = Instant::now() + OVER_LIMIT_LINGER;
    while !down.eof && down.buf.len() < down.buf.capacity() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(crate::rt::timeout(left, down.fill(2048, &ctx.buffers)).await, Ok(Ok(n)) if n > 0) {
            break;
        }
    }
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
    let (head, routed) = match read_head(ctx, down, offset, peer, scratch).await {
        Ok(got) => got,
        Err(outcome) => return outcome,
    };
    down.consume(head.head_len);
    ctx.in_flight.set(ctx.in_flight.get() + 1);
    ctx.touch();
    let req = Request { ctx, offset, peer, head: &head };
    let outcome = match &ctx.routes.routes[offset as usize] {
        ProductRoute::Status => answer_status(ctx, down, &head, scratch, peer).await,
        ProductRoute::Unconfigured { reason } => {
            // The body is read and dropped (bounded) so the connection can stay.
            let mut body = BodyProgress::new(head.framing);
            req.answer_failure(down, &mut body, "(none)", UpstreamFault::Unconfigured(reason).into(), scratch).await
        }
        ProductRoute::Forward { .. } => {
            let upstream = routed.expect("forward route has an upstream");
            *answer_buf = ctx.buffers.borrow_mut().take();
            let outcome = req.forward(down, upstream, scratch, answer_buf).await;
            ctx.buffers.borrow_mut().give_back(std::mem::take(answer_buf));
            outcome
        }
    };
    ctx.in_flight.set(ctx.in_flight.get() - 1);
    ctx.touch();
    outcome
}

/// Waits for a complete request head, routed once, from its target, before
/// it is parsed: the parse rewrites `Host` to that upstream host, and the
/// request goes to that same host. `Err`: how the connection goes on
/// without a request (closed, refused, idle at a drain).
async fn read_head<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    scratch: &mut Vec<u8>,
) -> Result<(RequestHead, Option<UpstreamId>), Outcome> {
    let cfg = &ctx.config;
    let mut head_started: Option<Instant> = (!down.filled().is_empty()).then(Instant::now);
    // Bytes of a partial head already seen to hold no line end: a head is
    // parsed again only when a line was completed (or it grew past the
    // limit), so a client trickling bytes costs a scan of its new bytes,
    // not a parse of the whole head per byte.
    let mut scanned = 0;
    loop {
        let filled = down.filled();
        let line_done = filled.get(scanned..).is_some_and(|new| new.contains(&b'\n'));
        scanned = filled.len();
        if line_done || filled.len() > cfg.max_header_bytes {
            let routed = ctx.routes.upstream_for(offset, head_target(filled));
            let upstream_host = routed.map(|id| ctx.upstream_host(id));
            match http1::parse_request(filled, cfg.max_header_bytes, cfg.max_body_bytes, upstream_host, scratch) {
                Ok(Some(head)) => return Ok((head, routed)),
                Ok(None) => {}
                Err(e) => {
                    refuse(ctx, down, offset, peer, &e, scratch).await;
                    return Err(Outcome::Close);
                }
            }
        }
        if down.eof {
            if !down.filled().is_empty() {
                tracing::debug!(product = PRODUCTS[offset as usize].name, %peer, "client closed mid-head");
            }
            return Err(Outcome::Close);
        }
        wait_for_head_bytes(ctx, down, offset, peer, head_started, scratch).await?;
        head_started.get_or_insert_with(Instant::now);
    }
}

/// Reads more of a head. Waiting for a new request: up to the idle timeout,
/// or until the drain starts. Inside a head: what is left of the header
/// timeout, counted from its first byte (slowloris), then 408.
async fn wait_for_head_bytes<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    head_started: Option<Instant>,
    scratch: &mut Vec<u8>,
) -> Result<(), Outcome> {
    let cfg = &ctx.config;
    let idle = down.filled().is_empty();
    let wait = match head_started {
        None => cfg.client_idle_timeout,
        Some(t) => cfg.header_timeout.saturating_sub(t.elapsed()),
    };
    let res = if idle {
        tokio::select! {
            r = crate::rt::timeout(wait, down.fill_ready()) => r,
            _ = ctx.drain_started() => return Err(Outcome::Idle),
        }
    } else {
        crate::rt::timeout(wait, down.fill(cfg.max_header_bytes + 1, &ctx.buffers)).await
    };
    let product = PRODUCTS[offset as usize].name;
    match res {
        Ok(Ok(_)) => Ok(()),
        Err(_) if idle => Err(Outcome::Close),
        Err(_) => {
            let event = Event { what: HEAD_TIMEOUT, product, about: About::Product, cause: http1::reason(408) };
            crate::count_or_log!(info, ctx.log, event, || format!("from {peer}"), product, %peer, timeout = ?cfg.header_timeout, "{HEAD_TIMEOUT}");
            ctx.stats.borrow_mut().product(offset).refused += 1;
            let body = "request head not received in time (limits.header_timeout)";
            http1::local_response(408, body, ClientConn::CLOSE, scratch);
            let _ = down.write(scratch).await;
            Err(Outcome::Close)
        }
        Ok(Err(e)) => {
            tracing::debug!(product, %peer, error = %e, "client read failed");
            Err(Outcome::Close)
        }
    }
}

/// A request whose head was read, on its way to an answer.
struct Request<'a, B: Backend> {
    ctx: &'a WorkerCtx<B>,
    offset: u16,
    peer: SocketAddr,
    head: &'a RequestHead,
}

impl<B: Backend> Request<'_, B> {
    fn product(&self) -> &'static str {
        PRODUCTS[self.offset as usize].name
    }

    /// Relays the request to `upstream` and answers how it went.
    async fn forward(
        &self,
        down: &mut Downstream<B::Stream>,
        upstream: UpstreamId,
        scratch: &mut Vec<u8>,
        answer_buf: &mut Vec<u8>,
    ) -> Outcome {
        let (ctx, offset) = (self.ctx, self.offset);
        let started = Instant::now();
        let mut body = BodyProgress::new(self.head.framing);
        let mut x = Exchange { ctx, down, offset, upstream, head: self.head, scratch, answer_buf, body: &mut body };
        let res = forward(&mut x).await;
        let host = ctx.upstream_host(upstream);
        match res {
            Ok(done) => {
                ctx.stats.borrow_mut().record_answer(offset, done.status, started.elapsed());
                Outcome::keep_if(done.keep_alive)
            }
            Err(e @ RelayError::Agent(_)) => {
                tracing::info!(product = self.product(), peer = %self.peer, cause = %e, "client connection failed mid-request; upstream exchange abandoned");
                Outcome::Close
            }
            Err(RelayError::Refused(e)) => {
                refuse(ctx, down, offset, self.peer, &e, scratch).await;
                Outcome::Close
            }
            Err(e @ RelayError::AnswerCut { .. }) => {
                let cause = e.cause().unwrap_or(Cause::Closed);
                ctx.stats.borrow_mut().record_error(offset, cause);
                let event = Event {
                    what: ANSWER_CUT,
                    product: self.product(),
                    about: About::Upstream(host),
                    cause: cause.label(),
                };
                crate::count_or_log!(warn, ctx.log, event, || e.to_string(), product = self.product(), upstream = host, cause = cause.label(), error = %e, "{ANSWER_CUT}");
                Outcome::Close
            }
            Err(e @ RelayError::Upstream { .. }) => {
                let status = e.status().unwrap_or(502);
                let outcome = self.answer_failure(down, &mut body, host, e, scratch).await;
                ctx.stats.borrow_mut().record_answer(offset, status, started.elapsed());
                outcome
            }
        }
    }

    /// Answers an upstream or relay fault with the status the Agent
    /// retries. What is left of the body is read and dropped first
    /// (bounded), so the connection can carry the Agent's retry.
    async fn answer_failure(
        &self,
        down: &mut Downstream<B::Stream>,
        body: &mut BodyProgress,
        host: &str,
        e: RelayError,
        scratch: &mut Vec<u8>,
    ) -> Outcome {
        let keep = drain_body(self.ctx, down, self.head, body).await;
        let client = ClientConn { close: !keep, ..self.head.client() };
        let (status, cause) = (e.status().unwrap_or(502), e.cause().unwrap_or(Cause::Closed));
        self.ctx.stats.borrow_mut().record_error(self.offset, cause);
        let addr = match &e {
            RelayError::Upstream { addr: Some(a), .. } => a.to_string(),
            _ => "-".into(),
        };
        let event = Event {
            what: UPSTREAM_FAILURE,
            product: self.product(),
            about: About::Upstream(host),
            cause: cause.label(),
        };
        crate::count_or_log!(warn, self.ctx.log, event, || e.to_string(), product = self.product(), upstream = host, addr = %addr, side = e.side().name(), cause = cause.label(), status, peer = %self.peer, error = %e, "{UPSTREAM_FAILURE}");
        let text = format!("fipsrelay: {} ({}) for {}: {}", http1::reason(status), cause.label(), host, e);
        http1::local_response(status, &text, client, scratch);
        let _ = down.write(scratch).await;
        Outcome::keep_if(keep)
    }
}

/// The request target of a (possibly partial) head, for routing before parse.
fn head_target(buf: &[u8]) -> &[u8] {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    parts.next();
    parts.next().unwrap_or(b"/")
}

/// Refuses a malformed request with its 4xx and a log line saying why.
async fn refuse<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    peer: SocketAddr,
    e: &RequestError,
    scratch: &mut Vec<u8>,
) {
    let status = e.status();
    let product = PRODUCTS[offset as usize].name;
    let event = Event { what: REFUSED, product, about: About::Product, cause: http1::reason(status) };
    crate::count_or_log!(warn, ctx.log, event, || format!("{status} for {peer}: {e}"), product, %peer, status, reason = %e, "{REFUSED}");
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

#[cfg(test)]
mod tests {
    //! Whole exchanges through the relay over the in-memory backend: an
    //! Agent connection, the worker's state, the pool and a TLS intake, in
    //! one thread and no socket.
    use super::*;
    use crate::admin::AdminAccess;
    use crate::io::mem::{pair, Mem, MemStream};
    use crate::metrics::StatsHub;
    use crate::route::RouteTable;
    use crate::status::StatusInfo;
    use crate::testing::{configs, http_202, intake};
    use crate::upstream::Directory;
    use crate::worker::Phase;
    use std::cell::Cell;
    use std::sync::Arc;

    const INTAKE: &str = "127.0.0.1:443";

    /// A worker's state for the memory backend, every product sent to
    /// [`INTAKE`]; the phase's sender keeps it running.
    fn worker(tls: Arc<rustls::ClientConfig>) -> (Rc<WorkerCtx<Mem>>, tokio::sync::watch::Sender<Phase>) {
        let raw = crate::config::parse_str(&format!("[upstream]\noverride_addr = \"{INTAKE}\"\n")).unwrap();
        let config = Arc::new(raw.validate().unwrap());
        let routes = Arc::new(RouteTable::new(&config));
        let directory = Arc::new(Directory::new(&routes, &config.override_addrs, config.health));
        let hub = Arc::new(StatsHub::new(1, routes.upstreams.len()));
        let (commands, _) = tokio::sync::mpsc::unbounded_channel();
        let info = Arc::new(StatusInfo {
            version: "test",
            commit: "test",
            fips_module: crate::crypto::linked_module(),
            io_backend: <Mem as Backend>::NAME,
            listen_address: config.listen_address,
            port_range_start: config.port_range_start,
            upstream_protocol: "http1",
            workers: 1,
            routes: routes.clone(),
            directory: directory.clone(),
            admin: AdminAccess { token: None, commands },
            readiness: std::sync::atomic::AtomicU8::new(crate::status::READY_SERVING),
        });
        let (phase_tx, phase) = tokio::sync::watch::channel(Phase::Running);
        let handed = Arc::new(std::sync::Mutex::new(Vec::new()));
        (Rc::new(WorkerCtx::new(0, config, routes, directory, tls, hub, info, phase, handed)), phase_tx)
    }

    /// Reads one answer (head and Content-Length body) off the Agent's end.
    async fn answer(agent: &mut MemStream) -> String {
        let mut got: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&got).into_owned();
                }
            }
            let (res, b) = agent.read(got).await;
            got = b;
            assert!(res.unwrap() > 0, "the relay closed the Agent connection");
        }
    }

    #[test]
    fn requests_are_relayed_on_pooled_sessions_and_a_closed_one_is_replaced() {
        let (client, server, _dir) = configs();
        Mem::block_on(async move {
            let accepted = Rc::new(Cell::new(0));
            // The intake's first connection carries two exchanges, then closes.
            crate::rt::spawn(intake(Mem::listen(INTAKE.parse().unwrap()), server, 2, accepted.clone(), Rc::new(http_202)));
            let (ctx, _running) = worker(client);
            let (mut agent, ours) = pair();
            crate::rt::spawn(serve(ctx.clone(), ours, 1, "127.0.0.1:50000".parse().unwrap()));
            // Small, large (read straight into records) and small again.
            for (i, len) in [10usize, 40_000, 5].into_iter().enumerate() {
                let head = format!(
                    "POST /api/v2/series HTTP/1.1\r\nHost: 127.0.0.1:9805\r\nDD-API-KEY: k\r\nContent-Length: {len}\r\n\r\n"
                );
                let body = vec![b'a' + i as u8; len];
                agent.write_all([head.as_bytes(), &body].concat()).await.0.unwrap();
                let a = answer(&mut agent).await;
                assert!(a.starts_with("HTTP/1.1 202"), "request {i}: {a}");
                assert!(a.ends_with(&format!("{{\"bytes\":{len}}}")), "request {i}: {a}");
            }
            // Two sessions: the first carried two requests; the intake's
            // close was seen before the third, which went on a new one.
            assert_eq!(accepted.get(), 2);
            assert_eq!(ctx.upstream.pool.borrow().open_count(0), 1);
            // A malformed head: 400 from the relay, nothing forwarded.
            agent.write_all(b"POST /api/v2/series HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec()).await.0.unwrap();
            let a = answer(&mut agent).await;
            assert!(a.starts_with("HTTP/1.1 400"), "{a}");
            assert_eq!(accepted.get(), 2);
        })
        .unwrap();
    }
}
