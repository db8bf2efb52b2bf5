//! One exchange with the intake: the request's head and body out, the
//! answer back to the Agent. [`forward`] dispatches to the protocol the
//! intake speaks: [`h2`] (HTTP/2, `upstream.protocol = h2 | auto`) or
//! [`h1`] (HTTP/1.1, and `auto` where the intake picked it by ALPN). Both
//! read the body with [`BodyProgress`], read the Agent with [`read_body`]
//! and send the answer with [`AnswerOut`]; both fail with the one
//! [`RelayError`].
//!
//! # Bodies longer than the HTTP/2 window
//! A new stream may send only the intake's initial stream window (nginx:
//! 64 KiB, its `http2_body_preread_size`) before it waits for a
//! WINDOW_UPDATE, which comes a round trip later at best: over a 40 ms
//! path, a 1 MiB upload over h2 takes two round trips or more where
//! HTTP/1.1, with no window, takes one. The sender cannot enlarge the
//! intake's window, so such a body goes over an HTTP/1.1 session to the
//! same host ([`window_detour`]): an idle one from the pool, or a new one
//! (`Connector::open_http1`), as HAProxy would open one. A new session
//! costs the TCP and TLS handshakes, about what nginx's window costs; an
//! intake that opens its window only as it reads (the mock) would cost a
//! round trip per 64 KiB, 16 for 1 MiB. If no session can be had, the body
//! goes over HTTP/2 after all.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use super::downstream::Downstream;
use super::error::{answer_fault, AgentFault, RelayError, UpstreamFault};
use super::IO_BUF;
use crate::buffers::BufferPool;
use crate::config::UpstreamProtocol;
use crate::http1::{BodyFraming, ChunkedScanner, ClientConn, RequestError, RequestHead};
use crate::io::{Backend, Stream};
use crate::route::UpstreamId;
use crate::upstream::h2pool::bump;
use crate::worker::ctx::WorkerCtx;

mod h1;
mod h2;

/// One request on its way: everything an exchange works on.
pub(super) struct Exchange<'a, B: Backend> {
    pub(super) ctx: &'a WorkerCtx<B>,
    pub(super) down: &'a mut Downstream<B::Stream>,
    /// The Agent port's offset (the product).
    pub(super) offset: u16,
    pub(super) upstream: UpstreamId,
    pub(super) head: &'a RequestHead,
    /// The request head rendered for the intake; then the answer head
    /// rendered for the Agent.
    pub(super) scratch: &'a mut Vec<u8>,
    /// Answer bytes on their way to the Agent.
    pub(super) answer_buf: &'a mut Vec<u8>,
    pub(super) body: &'a mut BodyProgress,
}

/// How an exchange ended well: the status the Agent got and whether its
/// connection may carry another request.
pub(super) struct Answered {
    pub(super) status: u16,
    pub(super) keep_alive: bool,
}

impl<B: Backend> Exchange<'_, B> {
    /// How the Agent connection stands after this answer: closed when the
    /// Agent asked, or when the relay drains (but not for a restart in
    /// place, where it is handed over).
    fn client(&self) -> ClientConn {
        let ctx = self.ctx;
        ClientConn { close: self.head.close || (ctx.draining().is_some() && !ctx.handing_over()), ..self.head.client() }
    }

    /// Counts the request body and the bytes copied for it.
    fn count_sent(&self, copied: u64) {
        let mut stats = self.ctx.stats.borrow_mut();
        let p = stats.product(self.offset);
        p.bytes_in += self.body.payload();
        p.bytes_copied += copied;
    }

    /// Counts the answer body and the bytes copied for it.
    fn count_answered(&self, sent: u64, copied: u64) {
        let mut stats = self.ctx.stats.borrow_mut();
        let p = stats.product(self.offset);
        p.bytes_out += sent;
        p.bytes_copied += copied;
    }

    /// Sends `100 Continue` to an Agent that waits for it.
    async fn send_continue(&mut self) -> Result<(), RelayError> {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        self.down.write(&mut cont).await.map_err(RelayError::agent_io)
    }
}

/// Relays one request and its answer over the protocol the intake speaks:
/// the one ALPN chose on the session that carries it.
pub(super) async fn forward<B: Backend>(x: &mut Exchange<'_, B>) -> Result<Answered, RelayError> {
    let h2_allowed = x.ctx.config.protocol != UpstreamProtocol::Http1;
    // A body the intake's HTTP/2 window would hold back, over HTTP/1.1
    // (`None`: the pooled session was gone or dead and a new one picked h2:
    // the request, untouched, goes the usual way).
    if h2_allowed && window_detour(x).await {
        if let Some(done) = h1::forward(x).await? {
            return Ok(done);
        }
    }
    // An `auto` host whose intake changes its mind (h2 on, then off) takes
    // a round or two; a third would be an intake that flips on every session.
    for _ in 0..3 {
        // HTTP/2 to the intake, unless it picked HTTP/1.1 by ALPN (auto).
        if h2_allowed {
            if let Some(done) = h2::forward(x).await? {
                return Ok(done);
            }
        }
        // HTTP/1.1, unless a new session picked h2 (then HTTP/2 again).
        if let Some(done) = h1::forward(x).await? {
            return Ok(done);
        }
    }
    Err(UpstreamFault::AlpnFlapping.into())
}

/// Whether this request's body goes over HTTP/1.1 rather than wait for
/// the host's HTTP/2 window (module doc): a Content-Length body longer
/// than a new stream may send, once the pool holds an idle HTTP/1.1
/// session to the host (one is opened if it holds none). Counted.
async fn window_detour<B: Backend>(x: &Exchange<'_, B>) -> bool {
    let Some(len) = x.body.left() else { return false };
    let counters = {
        let hosts = x.ctx.h2.borrow();
        if !hosts.window_short(x.upstream, len) {
            return false;
        }
        hosts.counters[x.upstream].clone()
    };
    let up = &x.ctx.upstream;
    let idle = up.pool.borrow_mut().has_live(x.upstream, Instant::now());
    let ready = idle || up.open_http1(x.upstream).await;
    if ready {
        bump(&counters.window_detours, 1);
    }
    ready
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
    pub(super) fn take(&mut self, input: &[u8], max: usize, max_body: u64) -> Result<usize, RelayError> {
        let input = &input[..input.len().min(max)];
        match self {
            BodyProgress::Length { left, .. } => {
                let n = (*left as usize).min(input.len());
                *left -= n as u64;
                Ok(n)
            }
            BodyProgress::Chunked(scanner) => {
                let n = scanner.scan(input).map_err(RequestError::Chunked)?;
                check_size(scanner, max_body)?;
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

/// A chunked body past `limits.max_body_bytes` is refused (413).
pub(super) fn check_size(scanner: &ChunkedScanner, max_body: u64) -> Result<(), RequestError> {
    if scanner.payload > max_body {
        return Err(RequestError::BodyTooLarge { len: scanner.payload, limit: max_body });
    }
    Ok(())
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

impl<'a> AnswerOut<'a> {
    pub(super) fn new(head: &'a mut Vec<u8>) -> Self {
        AnswerOut { head, head_pending: true, copied: 0 }
    }

    /// An upstream failure mid-answer: while nothing has reached the Agent
    /// yet it can still get a status it retries; after that, only a cut.
    pub(super) fn fail(&self, fault: UpstreamFault, addr: SocketAddr) -> RelayError {
        answer_fault(self.head_pending, fault, addr)
    }

    /// Sends `body[..n]` (after the head, the first time) and empties `body`.
    /// With no body bytes the head stays back: see [`AnswerOut::finish`].
    pub(super) async fn send<S: Stream>(
        &mut self,
        down: &mut Downstream<S>,
        body: &mut Vec<u8>,
        n: usize,
    ) -> Result<(), RelayError> {
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
        res.map_err(RelayError::agent_io)
    }

    /// Sends the head if no body byte carried it (empty bodies).
    pub(super) async fn finish<S: Stream>(&mut self, down: &mut Downstream<S>) -> Result<(), RelayError> {
        if !self.head_pending {
            return Ok(());
        }
        self.head_pending = false;
        down.write(self.head).await.map_err(RelayError::agent_io)
    }
}

/// Reads more of a request body from the Agent into its buffer (a pooled
/// one), waiting at most `idle`.
pub(super) async fn read_body<S: Stream>(
    down: &mut Downstream<S>,
    idle: std::time::Duration,
    pool: &RefCell<BufferPool>,
) -> Result<(), RelayError> {
    down.borrow_big(pool);
    match crate::rt::timeout(idle, down.fill(IO_BUF, pool)).await {
        Err(_) => Err(AgentFault::Stalled.into()),
        Ok(Err(e)) => Err(RelayError::agent_io(e)),
        Ok(Ok(0)) => Err(AgentFault::ClosedMidBody.into()),
        Ok(Ok(_)) => Ok(()),
    }
}
