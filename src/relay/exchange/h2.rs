//! One exchange over HTTP/2 to the intake: a stream on one of the worker's
//! connections to the host ([`crate::upstream::h2pool`]), run in the Agent
//! connection's task. It opens the stream, queues the body as the windows
//! allow, writes what it queued itself before it waits (when it is the
//! connection's only stream, [`H2Conn::write_now`]), and relays the answer
//! its connection's task filed.
//!
//! # No copy
//! Content-Length bytes that did not come with the request head are read
//! from the Agent's socket straight into the places of their DATA frames
//! in the connection's output, laid out in the TLS records that carry
//! them, and sealed there ([`body_into_output`]). What came with the head,
//! and chunked bodies (decoded in the Agent buffer), is copied once.
//!
//! # Backpressure
//! A stream's answer bytes wait in its slot until the exchange takes them
//! to write to the Agent; only then are they released to the intake's flow
//! control, and the next piece is taken only once that write is done, so an
//! Agent that reads slowly stalls its own stream (one window and one piece
//! in flight at most) and no other. A request body is
//! read from the Agent only while the stream's send window has room and
//! the connection's output is below its bound.
//!
//! # Faults (RFC 9113 §8.7 and the Agent's retry rules, DESIGN §1)
//! - A stream the intake never processed (REFUSED_STREAM, or above a
//!   GOAWAY's last stream id) is sent again on another connection, up to
//!   `upstream.retries` times, when its whole body is still in the Agent
//!   buffer (the body is consumed only once the answer head is there);
//!   else 502.
//! - A stream reset before its answer head: 502, which the Agent retries.
//! - The connection lost before the head: 502; after it: the Agent
//!   connection is cut.

use std::io::Write as _;
use std::net::SocketAddr;

use super::{AnswerOut, Answered, BodyProgress, Exchange};
use crate::h2::frame::ErrorCode;
use crate::h2::headers::AnswerHead;
use crate::http1::{self, BodyFraming, RequestError, ResponseHead};
use crate::io::{Backend, Stream};
use crate::relay::error::{AgentFault, RelayError, UpstreamFault, When};
use crate::upstream::h2pool::conn::{H2Conn, OpenRefused, StreamFault};
use crate::upstream::h2pool::{bump, H2Hosts, Pick};

/// How one attempt on a connection ended well.
enum Attempt {
    Answered(Answered),
    /// The intake never processed the stream, and the request can be sent
    /// again as it was: its body, this many bytes, is still at the front
    /// of the Agent buffer (consumed if the exchange gives up).
    Replay(usize),
}

/// Relays one request over HTTP/2. `Ok(None)`: the intake picked HTTP/1.1
/// (`auto`); the caller relays it that way (the session went to the pool).
pub(super) async fn forward<B: Backend>(x: &mut Exchange<'_, B>) -> Result<Option<Answered>, RelayError> {
    let ctx = x.ctx;
    let retries = ctx.config.retries;
    let mut replays = 0;
    loop {
        let pick = H2Hosts::connection(&ctx.h2, &ctx.upstream, &ctx.stats, x.offset, x.upstream).await?;
        let Pick::H2(conn) = pick else { return Ok(None) };
        match attempt(x, &conn).await? {
            Attempt::Answered(done) => return Ok(Some(done)),
            Attempt::Replay(_) if replays < retries => {
                replays += 1;
                bump(&conn.counters.replays, 1);
                tracing::info!(upstream = ctx.upstream_host(x.upstream), addr = %conn.addr, replays, "the intake never processed the stream (GOAWAY or REFUSED_STREAM); sent again on another connection");
                *x.body = BodyProgress::new(x.head.framing);
            }
            Attempt::Replay(held) => {
                x.down.consume(held);
                return Err(UpstreamFault::RefusedAgain { times: replays + 1, retries }.at(conn.addr));
            }
        }
    }
}

/// One attempt of the exchange on `conn`: a stream opened (queued while
/// the intake's stream limit is reached), the request sent, the answer
/// relayed.
async fn attempt<B: Backend>(x: &mut Exchange<'_, B>, conn: &H2Conn) -> Result<Attempt, RelayError> {
    let cfg = &x.ctx.config;
    let queued = if conn.can_open() {
        None
    } else {
        let fault = UpstreamFault::QueueFull { queued: cfg.h2_max_queued, max_connections: cfg.h2_max_connections };
        Some(H2Hosts::enqueue(&x.ctx.h2, x.upstream, cfg.h2_max_queued).ok_or_else(|| fault.at(conn.addr))?)
    };
    let no_body = x.body.done() && !x.head.expect_continue;
    let id = match crate::rt::timeout(cfg.connect_timeout, conn.open_stream(x.scratch, no_body)).await {
        Err(_) => return Err(UpstreamFault::NoStream(cfg.h2_max_connections).at(conn.addr)),
        Ok(Err(OpenRefused::Elsewhere)) => return Ok(Attempt::Replay(0)),
        Ok(Err(OpenRefused::Fault(f))) => return Err(stream_fault(f, When::BeforeBodySent, conn.addr)),
        Ok(Ok(id)) => id,
    };
    drop(queued);
    let _stream = StreamGuard { conn, id };
    let mut held = 0;
    let res = on_stream(x, conn, id, &mut held).await;
    if !matches!(res, Ok(Attempt::Replay(_))) {
        // Answered or failed: the body the Agent buffer held is done with.
        x.down.consume(held);
    }
    res
}

/// Ends a stream's exchange however it ends (returned, failed, or dropped
/// with its Agent connection): the slot goes, an open stream is reset.
struct StreamGuard<'a> {
    conn: &'a H2Conn,
    id: u32,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.conn.finish(self.id);
    }
}

fn stream_fault(fault: StreamFault, when: When, addr: SocketAddr) -> RelayError {
    UpstreamFault::Stream { fault, when }.at(addr)
}

/// Sends the body and relays the answer of stream `id`; `held` counts the
/// body bytes kept at the front of the Agent buffer.
async fn on_stream<B: Backend>(
    x: &mut Exchange<'_, B>,
    conn: &H2Conn,
    id: u32,
    held: &mut usize,
) -> Result<Attempt, RelayError> {
    let (replayable, copied) = send_body(x, conn, id, held).await?;
    // The request's last frames, written in this task: it does not wait
    // for the connection's task to take its turn.
    conn.write_now();
    let answer = match await_head(x, conn, id).await {
        Err(StreamFault::Reset(ErrorCode::RefusedStream)) if replayable => return Ok(Attempt::Replay(*held)),
        Err(StreamFault::Reset(ErrorCode::RefusedStream)) => return Err(UpstreamFault::RefusedAfterBody.at(conn.addr)),
        Err(f) => return Err(stream_fault(f, When::BeforeAnswer, conn.addr)),
        Ok(answer) => answer?,
    };
    x.count_sent(copied);
    relay_answer(x, conn, id, &answer).await.map(Attempt::Answered)
}

/// Sends the request body on stream `id`. A body that is all in the Agent
/// buffer already (a typical Agent request) stays there until the answer
/// head (`held` counts it), so that a refused stream can be sent again as
/// it was. Returns whether it can, and the bytes copied.
async fn send_body<B: Backend>(
    x: &mut Exchange<'_, B>,
    conn: &H2Conn,
    id: u32,
    held: &mut usize,
) -> Result<(bool, u64), RelayError> {
    let holds = match &*x.body {
        BodyProgress::Length { left, .. } => !x.head.expect_continue && *left as usize <= x.down.filled().len(),
        BodyProgress::Chunked(_) => false,
    };
    let mut replayable = holds || x.body.done();
    if x.head.expect_continue && !x.body.done() {
        // The request head goes first (a 100 is only an invitation).
        conn.write_now();
        x.send_continue().await?;
    }
    let mut copied = 0u64;
    let mut sent_end = x.body.done() && !x.head.expect_continue;
    // Content-Length bytes not read yet go from the Agent's socket straight
    // into the connection's output, where they are sealed: no copy.
    let mut direct = !holds && x.body.left().is_some();
    while !sent_end {
        if x.down.filled().len() == *held && !x.body.done() {
            if direct {
                match body_into_output(x, conn, id).await? {
                    true => {
                        sent_end = x.body.done();
                        replayable = false;
                        continue;
                    }
                    // This backend reads only by waiting: into the Agent buffer.
                    false => direct = false,
                }
            }
            // What is queued goes out while the Agent's next bytes come.
            conn.write_now();
            super::read_body(x.down, x.ctx.config.client_idle_timeout, &x.ctx.buffers).await?;
        }
        let (consumed, payload) = next_payload(x, *held)?;
        if payload == 0 && !x.body.done() {
            x.down.consume(consumed);
            replayable = false;
            continue;
        }
        // However the sending ends, the `consumed` input bytes are taken
        // off the Agent buffer (or counted as held), so a failure never
        // leaves body bytes to be read as a request.
        let from = x.down.start + *held;
        let sent = send_payload(conn, id, &x.down.buf[from..from + payload], x.body.done()).await;
        if holds {
            *held += consumed;
        } else {
            x.down.consume(consumed);
            replayable = false;
        }
        // Copied once, into the connection's output, where the frames lie
        // in the places of their records and are sealed in place (the
        // HTTP/1.1 path reads bodies straight into records: no copy).
        copied += payload as u64;
        sent_end = sent?;
    }
    Ok((replayable, copied))
}

/// Body bytes a read straight into the connection's output takes at most:
/// eight records, as a read into HTTP/1.1 records.
const MAX_DIRECT: usize = 8 * 16 * 1024;

/// Sends the next Content-Length body bytes read from the Agent's socket
/// straight into the connection's output (DATA frames laid out in their
/// records, [`H2Conn::read_data`]), once the windows and the output have
/// room; waits for the Agent's bytes when none are there. `Ok(false)`:
/// this backend cannot wait without reading; nothing was sent.
async fn body_into_output<B: Backend>(x: &mut Exchange<'_, B>, conn: &H2Conn, id: u32) -> Result<bool, RelayError> {
    let lost = |f| stream_fault(f, When::BeforeBodySent, conn.addr);
    let idle = x.ctx.config.client_idle_timeout;
    let left = usize::try_from(x.body.left().unwrap_or(0)).unwrap_or(usize::MAX);
    loop {
        conn.send_room(id, false).await.map_err(lost)?;
        let io = &mut x.down.io;
        match conn.read_data(id, left.min(MAX_DIRECT), left, |buf, reads| io.try_read_strided_now(buf, reads)) {
            Err(f) => return Err(lost(f)),
            Ok(Ok(Some(0))) => {
                x.down.eof = true;
                return Err(AgentFault::ClosedMidBody.into());
            }
            Ok(Ok(Some(n))) => {
                x.body.count(n);
                return Ok(true);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(RelayError::agent_io(e)),
        }
        // Nothing there yet: what is queued goes out while the bytes come.
        conn.write_now();
        match crate::rt::timeout(idle, x.down.io.readable()).await {
            Err(_) => return Err(AgentFault::Stalled.into()),
            Ok(Err(e)) => return Err(RelayError::agent_io(e)),
            Ok(Ok(false)) => return Ok(false),
            Ok(Ok(true)) => {}
        }
    }
}

/// The payload at the front of the Agent's buffer, past the `held` bytes:
/// Content-Length bytes as they are, chunked ones decoded in place.
/// Returns `(input bytes consumed, payload bytes)`.
fn next_payload<B: Backend>(x: &mut Exchange<'_, B>, held: usize) -> Result<(usize, usize), RelayError> {
    let max_body = x.ctx.config.max_body_bytes;
    match &mut *x.body {
        BodyProgress::Length { .. } => {
            let n = x.body.take(&x.down.filled()[held..], usize::MAX, max_body)?;
            Ok((n, n))
        }
        BodyProgress::Chunked(scanner) => {
            let start = x.down.start;
            let decoded = scanner.dechunk(&mut x.down.buf[start..]).map_err(RequestError::Chunked)?;
            super::check_size(scanner, max_body)?;
            Ok(decoded)
        }
    }
}

/// Queues `payload` as DATA on stream `id`, as the windows allow; `done`:
/// the body ends with it. True when END_STREAM went out.
async fn send_payload(conn: &H2Conn, id: u32, payload: &[u8], done: bool) -> Result<bool, RelayError> {
    let lost = |f| stream_fault(f, When::BeforeBodySent, conn.addr);
    let mut at = 0;
    loop {
        let last = at == payload.len() && done;
        // Room in the stream's window and the connection's output.
        let room = conn.send_room(id, last).await.map_err(lost)?;
        let n = room.min(payload.len() - at);
        let end = last || (at + n == payload.len() && done);
        conn.send_data(id, &payload[at..at + n], end).map_err(lost)?;
        at += n;
        if end || at == payload.len() {
            return Ok(end);
        }
    }
}

/// Waits for the answer head, bounded by the response timeout and the
/// drain deadline, and renders it for the Agent into `scratch`, from the
/// fields as HTTP/2 gave them. The outer error is the stream's; the inner
/// one ends the exchange as it is.
async fn await_head<B: Backend>(
    x: &mut Exchange<'_, B>,
    conn: &H2Conn,
    id: u32,
) -> Result<Result<ResponseHead, RelayError>, StreamFault> {
    let timeout = x.ctx.config.response_timeout;
    let (client, method) = (x.client(), x.head.method);
    let scratch = &mut *x.scratch;
    let render = |h: &AnswerHead| {
        let reason = http1::reason(h.status).as_bytes();
        http1::render_answer(h.status, reason, false, 0, h.fields(), method, client, scratch)
    };
    let waited = tokio::select! {
        r = crate::rt::timeout(timeout, conn.answer_head(id, render)) => r,
        _ = x.ctx.drain_deadline() => return Ok(Err(UpstreamFault::Draining.at(conn.addr))),
    };
    match waited {
        Err(_) => Ok(Err(UpstreamFault::NoAnswer(timeout).at(conn.addr))),
        Ok(Err(fault)) => Err(fault),
        Ok(Ok(rendered)) => Ok(rendered.map_err(|e| UpstreamFault::BadHead(e).at(conn.addr))),
    }
}

/// Relays the answer body as it comes; each piece is released to flow
/// control as it is taken to be written to the Agent (the next piece waits
/// for that write).
async fn relay_answer<B: Backend>(
    x: &mut Exchange<'_, B>,
    conn: &H2Conn,
    id: u32,
    answer: &ResponseHead,
) -> Result<Answered, RelayError> {
    let timeout = x.ctx.config.response_timeout;
    let chunked = answer.framing == BodyFraming::Chunked && !answer.dechunk;
    let mut out = AnswerOut::new(x.scratch);
    let mut sent: u64 = 0;
    loop {
        let ended = match crate::rt::timeout(timeout, conn.answer_data(id, x.answer_buf)).await {
            Err(_) => return Err(out.fail(UpstreamFault::AnswerStalled, conn.addr)),
            Ok(Err(fault)) => return Err(out.fail(UpstreamFault::Stream { fault, when: When::MidAnswer }, conn.addr)),
            Ok(Ok(ended)) => ended,
        };
        let n = x.answer_buf.len();
        sent += n as u64;
        conn.release(id, n);
        if chunked {
            frame_chunk(x.answer_buf, ended);
        }
        let len = x.answer_buf.len();
        out.send(x.down, x.answer_buf, len).await?;
        if ended {
            break;
        }
    }
    out.finish(x.down).await?;
    let copied = out.copied + sent;
    if let BodyFraming::Length(total) = answer.framing {
        if sent != total {
            let fault = UpstreamFault::LengthMismatch { sent, total };
            return Err(RelayError::AnswerCut { fault, addr: Some(conn.addr) });
        }
    }
    x.count_answered(sent, copied);
    Ok(Answered { status: answer.status, keep_alive: !answer.client.close })
}

/// Frames DATA bytes as one HTTP/1.1 chunk (and the last chunk when the
/// stream ended), for an Agent that gets a chunked answer.
fn frame_chunk(buf: &mut Vec<u8>, ended: bool) {
    let n = buf.len();
    let mut framed = Vec::with_capacity(n + 16);
    if n > 0 {
        let _ = write!(framed, "{n:x}\r\n");
        framed.extend_from_slice(buf);
        framed.extend_from_slice(b"\r\n");
    }
    if ended {
        framed.extend_from_slice(b"0\r\n\r\n");
    }
    *buf = framed;
}
