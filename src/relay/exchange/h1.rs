//! One exchange over HTTP/1.1 on a session lent by the pool: the request
//! head (with the first body bytes) in one TLS write, the body streamed
//! (a Content-Length body read from the Agent in one vectored read straight
//! into up to 8 TLS record places, sealed there and written in one write),
//! the answer head parsed and rendered for the Agent,
//! the answer body streamed back as it is framed. The session goes back
//! to the pool only after a complete exchange; any early return drops the
//! lease, which closes it.
//!
//! # Backpressure
//! At most [`RECORDS_PER_READ`] records' worth of body at a time: the next
//! read from the Agent waits until the previous one was written to the
//! intake, and the next
//! answer bytes are read only after the previous ones reached the Agent.

use std::io;
use std::time::{Duration, Instant};

use super::{AnswerOut, Answered, Exchange};
use crate::config::UpstreamProtocol;
use crate::fault::Cause;
use crate::http1::{self, BodyFraming, ChunkedScanner, ResponseHead};
use crate::io::{Backend, Stream};
use crate::relay::downstream::Downstream;
use crate::relay::error::{AgentFault, RelayError, UpstreamFault, When};
use crate::relay::IO_BUF;
use crate::upstream::h2pool::H2Hosts;
use crate::upstream::pool::{Lease, PooledSession};
use crate::upstream::proxy::Hop;

type Session<'a, B> = Lease<'a, Hop<<B as Backend>::Stream>>;

/// Body records read from the Agent in one read and written to the intake
/// in one write: 128 KiB of plaintext, about the Agent's mean payload, so
/// a typical body takes one read and one write instead of one per 16 KiB
/// record (the session's write buffer grows to this once and keeps it).
const RECORDS_PER_READ: usize = 8;

/// Relays one request and its answer over HTTP/1.1. `Ok(None)`: the
/// intake picked h2 by ALPN on the new session this request was to take
/// (`auto`, a host served over HTTP/1.1 until then); that session is now
/// the host's HTTP/2 connection, and the request, untouched, goes there.
pub(super) async fn forward<B: Backend>(x: &mut Exchange<'_, B>) -> Result<Option<Answered>, RelayError> {
    let head_len = x.scratch.len();
    // Body bytes copied in user space on the way (the hotpath bench and
    // `/metrics` report them per forwarded byte).
    let folded = fold_first_bytes(x)?;
    let Some(mut session) = send_head(x, folded).await? else {
        x.scratch.truncate(head_len);
        *x.body = super::BodyProgress::new(x.head.framing);
        return Ok(None);
    };
    let mut copied = folded as u64;
    if x.head.expect_continue && !x.body.done() {
        x.send_continue().await?;
    }
    copied += send_body(x, &mut session).await?;
    x.count_sent(copied);
    let answer = read_answer_head(x, &mut session).await?;
    x.answer_buf.drain(..answer.head_len);
    let complete = relay_answer(x, &mut session, &answer).await?;
    // As the rendered head announced it.
    if complete && !answer.upstream_close {
        session.give_back(Instant::now());
    }
    Ok(Some(Answered { status: answer.status, keep_alive: !answer.client.close }))
}

/// The body bytes that came with the head ride in the same TLS record and
/// write as the head (one upstream write for a typical Agent request):
/// copied after it into `scratch`, and left in the Agent buffer until
/// [`send_head`] consumes them.
fn fold_first_bytes<B: Backend>(x: &mut Exchange<'_, B>) -> Result<usize, RelayError> {
    if x.head.expect_continue {
        return Ok(0);
    }
    let n = x.body.take(x.down.filled(), IO_BUF, x.ctx.config.max_body_bytes)?;
    x.scratch.extend_from_slice(&x.down.filled()[..n]);
    Ok(n)
}

/// Sends the head (with the `folded` body bytes) on a pooled session
/// first; if that one turns out dead before any byte was written, once
/// more on a fresh session. `None`: a fresh session picked h2 by ALPN and
/// went to the host's HTTP/2 connections; nothing was sent or consumed.
async fn send_head<'a, B: Backend>(
    x: &mut Exchange<'a, B>,
    folded: usize,
) -> Result<Option<Session<'a, B>>, RelayError> {
    let ctx = x.ctx;
    let mut allow_pooled = true;
    loop {
        let acquired = ctx.upstream.acquire(&ctx.stats, x.offset, x.upstream, allow_pooled).await;
        let (mut s, reused) = match acquired {
            Ok(got) => got,
            Err(e) => {
                // `body` counted the folded bytes: off the Agent buffer, so a
                // drain after the failure does not read them again.
                x.down.consume(folded);
                return Err(e.into());
            }
        };
        if !reused && s.session.is_h2() && ctx.config.protocol != UpstreamProtocol::Http1 {
            H2Hosts::adopt(&ctx.h2, &ctx.upstream, x.upstream, s.detach());
            return Ok(None);
        }
        let written = write_upstream(&mut s, x.scratch, ctx.config.response_timeout).await;
        match written {
            Err(e) if reused && allow_pooled => {
                tracing::debug!(upstream = ctx.upstream_host(x.upstream), error = %e, "pooled session dead on first write; retrying on a new one");
                // Dropped: closed and counted closed.
                drop(s);
                allow_pooled = false;
            }
            // Consumed whether or not the write worked: `body` counted them,
            // and a drain after a failure must not read them again.
            Err(fault) => {
                x.down.consume(folded);
                return Err(fault.at(s.addr));
            }
            Ok(()) => {
                x.down.consume(folded);
                return Ok(Some(s));
            }
        }
    }
}

/// Streams the rest of the body; returns the bytes copied on the way.
async fn send_body<B: Backend>(x: &mut Exchange<'_, B>, session: &mut Session<'_, B>) -> Result<u64, RelayError> {
    let (idle, timeout, max_body) =
        (x.ctx.config.client_idle_timeout, x.ctx.config.response_timeout, x.ctx.config.max_body_bytes);
    let addr = session.addr;
    let mut copied = 0;
    while !x.body.done() {
        if x.down.filled().is_empty() {
            // Content-Length: the Agent's bytes go straight into a record
            // buffer of the session and are sealed there (no copy).
            if let Some(left) = x.body.left() {
                let n = body_into_record(x.down, session, left, idle).await?;
                x.body.count(n);
                flush_upstream(session, timeout).await.map_err(|f| f.at(addr))?;
                continue;
            }
            super::read_body(x.down, idle, &x.ctx.buffers).await?;
        }
        let n = x.body.take(x.down.filled(), usize::MAX, max_body)?;
        // Chunked (or bytes read ahead of the body's record): sealing copies
        // them into the session's write buffer.
        copied += n as u64;
        let written = write_upstream(session, &x.down.filled()[..n], timeout).await;
        // Consumed whether or not the write worked: `body` already counted
        // these bytes, and a drain after a failure must not read them again
        // (nor take the body's tail for the next request).
        x.down.consume(n);
        written.map_err(|f| f.at(addr))?;
    }
    Ok(copied)
}

/// Waits for the answer head (interim ones skipped), bounded by the
/// response timeout and the drain deadline; the head rendered for the
/// Agent is left in `scratch`, the bytes read in `answer_buf`.
async fn read_answer_head<B: Backend>(
    x: &mut Exchange<'_, B>,
    session: &mut Session<'_, B>,
) -> Result<ResponseHead, RelayError> {
    let ctx = x.ctx;
    let addr = session.addr;
    let client = x.client();
    x.answer_buf.clear();
    let read_head = async {
        loop {
            if let Some(h) = parse_answer_head(x.answer_buf, ctx.config.max_header_bytes, x.head, client, x.scratch)? {
                return Ok(h);
            }
            if x.answer_buf.len() == x.answer_buf.capacity() {
                x.answer_buf.reserve(IO_BUF.min(ctx.config.max_header_bytes));
            }
            match session.session.read_plain(x.answer_buf).await {
                Ok(0) => return Err(UpstreamFault::Closed(When::BeforeAnswer)),
                Ok(_) => {}
                Err(source) => return Err(UpstreamFault::Read { source, when: When::BeforeAnswer }),
            }
        }
    };
    let timeout = ctx.config.response_timeout;
    tokio::select! {
        r = crate::rt::timeout(timeout, read_head) => match r {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(fault)) => Err(fault.at(addr)),
            Err(_) => Err(UpstreamFault::NoAnswer(timeout).at(addr)),
        },
        _ = ctx.drain_deadline() => Err(UpstreamFault::Draining.at(addr)),
    }
}

/// The final answer head in `buf`, once complete; interim (1xx) heads are
/// dropped from the front of `buf`.
fn parse_answer_head(
    buf: &mut Vec<u8>,
    limit: usize,
    request: &http1::RequestHead,
    client: http1::ClientConn,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, UpstreamFault> {
    while !buf.is_empty() {
        match http1::parse_response(buf, limit, request.method, client, out) {
            Ok(Some(h)) if h.status == 101 => return Err(UpstreamFault::SwitchedProtocols),
            Ok(Some(h)) if (100..200).contains(&h.status) => {
                buf.drain(..h.head_len);
            }
            Ok(Some(h)) => return Ok(Some(h)),
            Ok(None) => return Ok(None),
            Err(e) => return Err(UpstreamFault::BadHead(e)),
        }
    }
    Ok(None)
}

/// Streams the answer body as it is framed; the head goes out with the
/// first body bytes. True when the session ended the answer cleanly (it
/// may carry another).
async fn relay_answer<B: Backend>(
    x: &mut Exchange<'_, B>,
    session: &mut Session<'_, B>,
    answer: &ResponseHead,
) -> Result<bool, RelayError> {
    let timeout = x.ctx.config.response_timeout;
    let mut out = AnswerOut::new(x.scratch);
    let mut reader = AnswerReader { session, buf: x.answer_buf, timeout };
    let (complete, sent) = match answer.framing {
        BodyFraming::None => (reader.buf.is_empty(), 0),
        BodyFraming::Length(total) => reader.by_length(x.down, &mut out, total).await?,
        BodyFraming::Chunked => reader.chunked(x.down, &mut out, answer.dechunk).await?,
        BodyFraming::UntilClose => reader.until_close(x.down, &mut out).await?,
    };
    out.finish(x.down).await?;
    let copied = out.copied;
    x.count_answered(sent, copied);
    Ok(complete)
}

/// Reads the answer body off the session, one read at a time.
struct AnswerReader<'s, 'l, 'b, S: Stream> {
    session: &'s mut Lease<'l, S>,
    buf: &'b mut Vec<u8>,
    timeout: Duration,
}

impl<S: Stream> AnswerReader<'_, '_, '_, S> {
    /// Reads more of the answer body (the buffer emptied first).
    async fn more(&mut self, out: &AnswerOut<'_>) -> Result<(), RelayError> {
        self.buf.clear();
        let fault = match crate::rt::timeout(self.timeout, self.session.session.read_plain(self.buf)).await {
            Ok(Ok(n)) if n > 0 => return Ok(()),
            Ok(Ok(_)) => UpstreamFault::Closed(When::MidAnswer),
            Ok(Err(source)) => UpstreamFault::Read { source, when: When::MidAnswer },
            Err(_) => UpstreamFault::AnswerStalled,
        };
        Err(out.fail(fault, self.session.addr))
    }

    /// A Content-Length answer: `(complete, bytes sent)`.
    async fn by_length<D: Stream>(
        &mut self,
        down: &mut Downstream<D>,
        out: &mut AnswerOut<'_>,
        total: u64,
    ) -> Result<(bool, u64), RelayError> {
        let mut sent: u64 = 0;
        loop {
            let n = ((total - sent) as usize).min(self.buf.len());
            let extra = self.buf.len() - n;
            sent += n as u64;
            out.send(down, self.buf, n).await?;
            if extra > 0 {
                return Ok((false, sent)); // bytes after the answer: the session is confused
            }
            if sent == total {
                return Ok((true, sent));
            }
            self.more(out).await?;
        }
    }

    /// A chunked answer, passed on as it is framed, or decoded for an
    /// HTTP/1.0 Agent (the close ends it).
    async fn chunked<D: Stream>(
        &mut self,
        down: &mut Downstream<D>,
        out: &mut AnswerOut<'_>,
        dechunk: bool,
    ) -> Result<(bool, u64), RelayError> {
        let mut scanner = ChunkedScanner::new();
        loop {
            let scanned = if dechunk { scanner.dechunk(self.buf) } else { scanner.scan(self.buf).map(|n| (n, n)) };
            let (n, pass) = scanned.map_err(|e| out.fail(UpstreamFault::BadChunk(e), self.session.addr))?;
            let extra = self.buf.len() - n;
            out.send(down, self.buf, pass).await?;
            if scanner.is_done() {
                return Ok((extra == 0, scanner.payload));
            }
            self.more(out).await?;
        }
    }

    /// An answer framed by the end of the connection.
    async fn until_close<D: Stream>(
        &mut self,
        down: &mut Downstream<D>,
        out: &mut AnswerOut<'_>,
    ) -> Result<(bool, u64), RelayError> {
        let mut sent: u64 = 0;
        loop {
            sent += self.buf.len() as u64;
            let n = self.buf.len();
            out.send(down, self.buf, n).await?;
            match self.more(out).await {
                Ok(()) => {}
                // The intake closing (or resetting) ends the answer.
                Err(e) if e.cause() == Some(Cause::Closed) => return Ok((false, sent)),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Encrypts and writes to the intake; a write stalled longer than `timeout`
/// (the intake stopped reading) fails.
async fn write_upstream<S: Stream>(
    session: &mut PooledSession<S>,
    data: &[u8],
    timeout: Duration,
) -> Result<(), UpstreamFault> {
    bounded_write(timeout, session.session.write_plain(data)).await
}

/// Writes what is sealed and queued on the session, bounded like
/// [`write_upstream`].
async fn flush_upstream<S: Stream>(session: &mut PooledSession<S>, timeout: Duration) -> Result<(), UpstreamFault> {
    bounded_write(timeout, session.session.flush()).await
}

/// A write to the intake that fails once it stalls for `timeout`.
async fn bounded_write(
    timeout: Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> Result<(), UpstreamFault> {
    match crate::rt::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(UpstreamFault::Write(e)),
        Err(_) => Err(UpstreamFault::WriteStalled(timeout)),
    }
}

/// Reads as much of the body as the Agent's socket holds, up to
/// [`RECORDS_PER_READ`] records (at most `left` bytes), in one vectored
/// read straight into the session's record buffer, and seals the records
/// there; [`flush_upstream`] then writes them in one write. Returns the
/// bytes read. A failure drops the lease with the session, which is then
/// poisoned: it is never reused.
async fn body_into_record<S: Stream, U: Stream>(
    down: &mut Downstream<S>,
    session: &mut PooledSession<U>,
    left: u64,
    idle: Duration,
) -> Result<usize, RelayError> {
    let addr = session.addr;
    let write_failed = |e: io::Error| UpstreamFault::Write(e).at(addr);
    let left = usize::try_from(left).unwrap_or(usize::MAX);
    let mut lent = session.session.lend_records(left, RECORDS_PER_READ).map_err(write_failed)?;
    let read = down.io.read_strided(std::mem::take(&mut lent.buf), lent.reads);
    let Ok((res, buf)) = crate::rt::timeout(idle, read).await else {
        return Err(AgentFault::Stalled.into());
    };
    let n = match res {
        Ok(0) => {
            down.eof = true;
            return Err(AgentFault::ClosedMidBody.into());
        }
        Ok(n) => n,
        Err(e) => return Err(RelayError::agent_io(e)),
    };
    lent.buf = buf;
    session.session.seal_lent_records(lent, n).map_err(write_failed)?;
    Ok(n)
}
