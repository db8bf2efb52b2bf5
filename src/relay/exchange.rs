//! One exchange on an intake session: take a pooled session or open one
//! (address choice, retries, panic mode), stream the request out, read and
//! stream the answer back. The session is held by the pool's `Lease`: given
//! back after a complete exchange, closed (and counted closed) otherwise.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::downstream::Downstream;
use super::failure::Failure;
use super::IO_BUF;
use crate::buffers::BufferPool;
use crate::config::UpstreamProtocol;
use crate::http1::{self, BodyFraming, ChunkedScanner, ClientConn, RequestError, RequestHead};
use crate::io::{Backend, Stream};
use crate::metrics::ErrorCause;
use crate::route::{UpstreamId, PRODUCTS};
use crate::upstream::pool::{Lease, PooledSession};
use crate::upstream::proxy::Hop;
use crate::upstream::{open_session, OpenError};
use crate::worker::WorkerCtx;

/// Takes a live pooled session or opens a new one.
pub(super) async fn acquire<B: Backend>(
    ctx: &WorkerCtx<B>,
    offset: u16,
    upstream: UpstreamId,
    allow_pooled: bool,
) -> Result<(Lease<'_, Hop<B::Stream>>, bool), Failure> {
    if allow_pooled {
        let (session, _dropped) = ctx.pool.borrow_mut().take(upstream, Instant::now());
        let mut st = ctx.stats.borrow_mut();
        if let Some(s) = session {
            st.product(offset).pool_hits += 1;
            return Ok((Lease::taken(&ctx.pool, upstream, s), true));
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
    // one, up to `upstream.retries` more times (like HAProxy's retries +
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
        let opened = crate::rt::timeout(
            limit,
            open_session::<B>(ctx.directory.dial(upstream, addr), ctx.tls.clone(), ctx.server_name(upstream), limit),
        )
        .await
        .unwrap_or(Err(OpenError::ConnectTimeout { addr, after: limit }));
        return match opened {
            Ok(mut s) => {
                ctx.directory.revived(upstream, endpoint);
                s.endpoint = Some(endpoint.clone());
                tracing::debug!(upstream = ctx.upstream_host(upstream), %addr, "panic probe connected");
                Ok((Lease::opened(&ctx.pool, upstream, s), false))
            }
            Err(e) => {
                ctx.directory.connect_failed(upstream, endpoint, &e);
                Err(Failure::Upstream { cause: open_error_cause(&e), detail: e.to_string(), addr: e.addr() })
            }
        };
    }
    let attempts = up.min(1 + ctx.config.retries);
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
                tracing::debug!(upstream = ctx.upstream_host(upstream), %addr, tls = %s.session.describe(), "upstream session opened");
                return Ok((Lease::opened(&ctx.pool, upstream, s), false));
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
pub(super) fn open_error_cause(e: &OpenError) -> ErrorCause {
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
pub(super) async fn forward<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    upstream: UpstreamId,
    head: &RequestHead,
    upstream_head: &mut Vec<u8>,
    answer_buf: &mut Vec<u8>,
    body: &mut BodyProgress,
) -> Result<(u16, bool), Failure> {
    if ctx.config.protocol != UpstreamProtocol::Http1 {
        // HTTP/2 to the intake, unless it picked HTTP/1.1 by ALPN (auto).
        if let Some(done) =
            super::h2::forward(ctx, down, offset, upstream, head, upstream_head, answer_buf, body).await?
        {
            return Ok(done);
        }
    }
    // Body bytes copied in user space on the way (the hotpath bench and
    // `/metrics` report them per forwarded byte).
    let mut copied: u64 = 0;
    // The body bytes that came with the head ride in the same TLS record and
    // write as the head (one upstream write for a typical Agent request).
    if !head.expect_continue {
        let n = body.take(down.filled(), IO_BUF, ctx.config.max_body_bytes)?;
        upstream_head.extend_from_slice(&down.filled()[..n]);
        copied += n as u64;
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
                // Dropped: closed and counted closed.
                drop(s);
                allow_pooled = false;
            }
            Err(e) => {
                return Err(Failure::Upstream { cause: ErrorCause::Write, detail: e.to_string(), addr: Some(s.addr) });
            }
        }
    };
    // From here on, any early return drops the lease: the session is closed.
    let addr = pooled.addr;

    if head.expect_continue && !body.done() {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        down.write(&mut cont).await.map_err(|e| Failure::Downstream(e.to_string()))?;
    }

    // Stream the rest of the body.
    let idle = ctx.config.client_idle_timeout;
    while !body.done() {
        if down.filled().is_empty() {
            // Content-Length: the Agent's bytes go straight into a record
            // buffer of the session and are sealed there (no copy).
            if let Some(left) = body.left() {
                let n = body_into_record(down, &mut pooled, left, idle).await?;
                body.count(n);
                flush_upstream(&mut pooled, ctx.config.response_timeout).await.map_err(|e| Failure::Upstream {
                    cause: ErrorCause::Write,
                    detail: e.to_string(),
                    addr: Some(addr),
                })?;
                continue;
            }
            read_body(down, idle, &ctx.buffers).await?;
        }
        let n = body.take(down.filled(), usize::MAX, ctx.config.max_body_bytes)?;
        // Chunked (or bytes read ahead of the body's record): sealing copies
        // them into the session's write buffer.
        copied += n as u64;
        let written = write_upstream(&mut pooled, &down.filled()[..n], ctx.config.response_timeout).await;
        // Consumed whether or not the write worked: `body` already counted
        // these bytes, and a drain after a failure must not read them again
        // (nor take the body's tail for the next request).
        down.consume(n);
        written.map_err(|e| Failure::Upstream { cause: ErrorCause::Write, detail: e.to_string(), addr: Some(addr) })?;
    }
    let body_bytes = body.payload();
    {
        let mut stats = ctx.stats.borrow_mut();
        let p = stats.product(offset);
        p.bytes_in += body_bytes;
        p.bytes_copied += copied;
    }

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
        r = crate::rt::timeout(ctx.config.response_timeout, read_head) => match r {
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
    let mut answer = AnswerOut { head: upstream_head, head_pending: true, copied: 0 };
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
    {
        let mut stats = ctx.stats.borrow_mut();
        let p = stats.product(offset);
        p.bytes_out += sent;
        p.bytes_copied += answer.copied;
    }

    // As the rendered head announced it.
    let keep_client = !answer_head.client.close;
    if complete && !answer_head.upstream_close {
        pooled.give_back(Instant::now());
    }
    Ok((answer_head.status, keep_client))
}

/// Where a request body stands: how much is left, or the chunked scanner.
pub(super) enum BodyProgress {
    Length { left: u64, total: u64 },
    Chunked(ChunkedScanner),
}

impl BodyProgress {
    pub(super) fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Length(n) => BodyProgress::Length { left: n, total: n },
            BodyFraming::Chunked => BodyProgress::Chunked(ChunkedScanner::new()),
            BodyFraming::None | BodyFraming::UntilClose => BodyProgress::Length { left: 0, total: 0 },
        }
    }

    pub(super) fn done(&self) -> bool {
        match self {
            BodyProgress::Length { left, .. } => *left == 0,
            BodyProgress::Chunked(s) => s.is_done(),
        }
    }

    /// How many bytes of `input` (at most `max`) belong to the body; counts them as sent.
    pub(super) fn take(&mut self, input: &[u8], max: usize, max_body: u64) -> Result<usize, Failure> {
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

    pub(super) fn payload(&self) -> u64 {
        match self {
            BodyProgress::Length { total, .. } => *total,
            BodyProgress::Chunked(s) => s.payload,
        }
    }

    /// Counts `n` body bytes that went out without passing through
    /// [`Self::take`] (read straight into a record); only for a
    /// Content-Length body, and at most what is left.
    pub(super) fn count(&mut self, n: usize) {
        if let BodyProgress::Length { left, .. } = self {
            debug_assert!(n as u64 <= *left);
            *left -= (n as u64).min(*left);
        }
    }

    /// Bytes still to come, when the framing says (Content-Length).
    pub(super) fn left(&self) -> Option<u64> {
        match self {
            BodyProgress::Length { left, .. } => Some(*left),
            BodyProgress::Chunked(_) => None,
        }
    }
}

/// The answer head, held back until the first body bytes can go with it.
pub(super) struct AnswerOut<'a> {
    pub(super) head: &'a mut Vec<u8>,
    pub(super) head_pending: bool,
    /// Answer bytes copied in user space: each went from the session's
    /// opened record into the answer buffer, and the first ones once more
    /// into the head's write.
    pub(super) copied: u64,
}

impl AnswerOut<'_> {
    /// An upstream failure mid-answer: while nothing has reached the Agent
    /// yet it can still get a status it retries; after that, only a cut.
    pub(super) fn fail(&self, cause: ErrorCause, detail: String, addr: SocketAddr) -> Failure {
        if self.head_pending {
            Failure::Upstream { cause, detail, addr: Some(addr) }
        } else {
            Failure::AnswerCut { cause, detail }
        }
    }

    /// Sends `body[..n]` (after the head, the first time) and empties `body`.
    /// With no body bytes the head stays back: see [`AnswerOut::finish`].
    pub(super) async fn send<S: Stream>(
        &mut self,
        down: &mut Downstream<S>,
        body: &mut Vec<u8>,
        n: usize,
    ) -> Result<(), Failure> {
        self.copied += n as u64;
        let res = if n == 0 {
            Ok(())
        } else if self.head_pending {
            self.head_pending = false;
            self.head.extend_from_slice(&body[..n]);
            self.copied += n as u64;
            down.write(self.head).await
        } else {
            body.truncate(n);
            down.write(body).await
        };
        body.clear();
        res.map_err(|e| Failure::Downstream(e.to_string()))
    }

    /// Sends the head if no body byte carried it (empty bodies).
    pub(super) async fn finish<S: Stream>(&mut self, down: &mut Downstream<S>) -> Result<(), Failure> {
        if !self.head_pending {
            return Ok(());
        }
        self.head_pending = false;
        down.write(self.head).await.map_err(|e| Failure::Downstream(e.to_string()))
    }
}

/// Encrypts and writes to the intake; a write stalled longer than `timeout`
/// (the intake stopped reading) fails.
pub(super) async fn write_upstream<S: Stream>(
    pooled: &mut PooledSession<S>,
    data: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    bounded_write(timeout, pooled.session.write_plain(data)).await
}

/// Writes what is sealed and queued on the session, bounded like
/// [`write_upstream`].
async fn flush_upstream<S: Stream>(pooled: &mut PooledSession<S>, timeout: Duration) -> io::Result<()> {
    bounded_write(timeout, pooled.session.flush()).await
}

/// A write to the intake that fails once it stalls for `timeout`.
async fn bounded_write(timeout: Duration, write: impl std::future::Future<Output = io::Result<()>>) -> io::Result<()> {
    match crate::rt::timeout(timeout, write).await {
        Ok(res) => res,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the intake stopped reading the request for {timeout:?} (upstream.response_timeout)"),
        )),
    }
}

/// Reads up to one record of the body (at most `left` bytes) from the
/// Agent straight into the session's record buffer and seals it there.
/// Returns the bytes read. A failure drops the lease with the session,
/// which is then poisoned: it is never reused.
async fn body_into_record<S: Stream, U: Stream>(
    down: &mut Downstream<S>,
    pooled: &mut PooledSession<U>,
    left: u64,
    idle: Duration,
) -> Result<usize, Failure> {
    let addr = pooled.addr;
    let write_failed =
        |e: io::Error| Failure::Upstream { cause: ErrorCause::Write, detail: e.to_string(), addr: Some(addr) };
    let mut lent = pooled.session.lend_record(usize::try_from(left).unwrap_or(usize::MAX)).map_err(write_failed)?;
    let read = down.io.read_max(std::mem::take(&mut lent.buf), lent.max);
    let Ok((res, buf)) = crate::rt::timeout(idle, read).await else {
        return Err(Failure::Downstream("client stopped sending the body".into()));
    };
    let n = match res {
        Ok(0) => {
            down.eof = true;
            return Err(Failure::Downstream("client closed mid-body".into()));
        }
        Ok(n) => n,
        Err(e) => return Err(Failure::Downstream(e.to_string())),
    };
    lent.buf = buf;
    pooled.session.seal_lent(lent).map_err(write_failed)?;
    Ok(n)
}

pub(super) async fn read_body<S: Stream>(
    down: &mut Downstream<S>,
    idle: Duration,
    pool: &RefCell<BufferPool>,
) -> Result<(), Failure> {
    down.borrow_big(pool);
    match crate::rt::timeout(idle, down.fill(IO_BUF, pool)).await {
        Err(_) => Err(Failure::Downstream("client stopped sending the body".into())),
        Ok(Err(e)) => Err(Failure::Downstream(e.to_string())),
        Ok(Ok(0)) => Err(Failure::Downstream("client closed mid-body".into())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Reads more of the answer body (buffer emptied by the caller first).
pub(super) async fn read_answer<S: Stream>(
    pooled: &mut PooledSession<S>,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), (ErrorCause, String)> {
    buf.clear();
    match crate::rt::timeout(timeout, pooled.session.read_plain(buf)).await {
        Err(_) => Err((ErrorCause::Timeout, "the intake stopped sending its answer".into())),
        Ok(Err(e)) => Err((ErrorCause::Closed, format!("the intake connection failed mid-answer: {e}"))),
        Ok(Ok(0)) => Err((ErrorCause::Closed, "the intake closed the connection mid-answer".into())),
        Ok(Ok(_)) => Ok(()),
    }
}
