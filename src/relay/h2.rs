//! Exchanges over HTTP/2 to the intake (`upstream.protocol = h2 | auto`):
//! many Agent requests of a worker, one stream each, share a few TLS
//! sessions per intake host.
//!
//! Each connection is one task ([`drive`]) that owns the TLS session and
//! the protocol state ([`crate::h2::conn::Conn`]): every turn it writes all
//! the frames the exchanges queued (the requests of many Agent connections
//! in one TLS write), then reads, and files what it read under each
//! stream. An exchange ([`forward`]) runs in its Agent connection's task:
//! it opens a stream, queues the body as the windows allow, and takes its
//! answer from its stream's slot.
//!
//! # Backpressure
//! A stream's answer bytes wait in its slot until the Agent has taken them;
//! only then are they released to the intake's flow control, so an Agent
//! that reads slowly stalls its own stream and no other. A request body is
//! read from the Agent only while the stream's send window has room and
//! the connection's output is below [`MAX_PENDING_OUTPUT`].
//!
//! # Faults (RFC 9113 §8.7 and the Agent's retry rules, DESIGN §1)
//! - A stream the intake never processed (REFUSED_STREAM, or above a
//!   GOAWAY's last stream id) is sent again on another connection, up to
//!   [`REPLAYS`] times, when its whole body is still in the Agent buffer
//!   (the body is consumed only once the answer head is there); else 502.
//! - A stream reset before its answer head: 502, which the Agent retries.
//! - The connection lost before the head: 502; after it: the Agent
//!   connection is cut.
//!
//! # Liveness and queueing
//! A connection from which nothing has been read for half of
//! `upstream.idle_timeout` is sent a PING (by its task when idle, or by the
//! next exchange that would use it, which waits for the ACK); no ACK within
//! `upstream.connect_timeout` ends it. While every connection of a host is
//! at the intake's stream limit, exchanges wait for a stream, at most
//! `upstream.h2_max_queued` of them and at most `upstream.connect_timeout`
//! long; the others get 503.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::downstream::Downstream;
use super::exchange::{acquire, AnswerOut, BodyProgress};
use super::failure::Failure;
use super::IO_BUF;
use crate::config::UpstreamProtocol;
use crate::h2::conn::{Conn, Event, LocalSettings};
use crate::h2::frame::ErrorCode;
use crate::http1::{self, BodyFraming, ClientConn, RequestError, RequestHead};
use crate::io::{Backend, Stream};
use crate::metrics::ErrorCause;
use crate::route::UpstreamId;
use crate::upstream::pool::PooledSession;
use crate::worker::WorkerCtx;

/// Plaintext queued on a connection beyond which exchanges wait for the
/// connection's task to write it before they queue more body.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;
/// After an intake picked HTTP/1.1 by ALPN (`auto`), how long its host is
/// served over HTTP/1.1 before ALPN is offered again.
const HTTP1_RECHECK: Duration = Duration::from_secs(300);
/// Finished streams' slots kept per connection for reuse, and the largest
/// answer buffer one may keep.
const MAX_SPARE_SLOTS: usize = 64;
const SPARE_SLOT_BYTES: usize = 64 * 1024;

/// What a worker's HTTP/2 connections to one host did, for `/metrics` and
/// the bench (frames and requests per write).
#[derive(Default)]
pub struct H2Counters {
    /// TLS writes (each carrying every frame queued since the last one).
    pub writes: Cell<u64>,
    pub frames: Cell<u64>,
    /// Streams opened (requests, replays included).
    pub streams: Cell<u64>,
    /// Requests sent again after the intake refused them unprocessed.
    pub replays: Cell<u64>,
    /// Liveness PINGs sent.
    pub pings: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Wakes a connection's task: a flag and the task's waker, for one
/// thread (`tokio::sync::Notify` takes a mutex on every notify and every
/// wait, several times per request here).
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Raises the flag and wakes the waiting task; raised twice before the
    /// task looks, it wakes once.
    fn notify_one(&self) {
        if !self.raised.replace(true) {
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Ready once the flag is raised (lowering it).
    fn notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// A worker's HTTP/2 connections, per intake host.
pub struct H2Hosts {
    conns: Vec<Vec<Rc<H2Conn>>>,
    /// Connections being opened (connect and handshake under way), which
    /// count against `upstream.h2_max_connections` too.
    opening: Vec<usize>,
    /// Woken when an opening ends, for exchanges that wait for it.
    opened: Rc<Notify>,
    /// `auto`: the host picked HTTP/1.1; its requests take that path until then.
    http1_until: Vec<Option<Instant>>,
    /// Exchanges waiting for a stream while every connection is at its limit.
    queued: Vec<usize>,
    pub counters: Vec<Rc<H2Counters>>,
}

impl H2Hosts {
    pub fn new(upstreams: usize) -> Self {
        H2Hosts {
            conns: vec![Vec::new(); upstreams],
            opening: vec![0; upstreams],
            opened: Rc::new(Notify::new()),
            http1_until: vec![None; upstreams],
            queued: vec![0; upstreams],
            counters: (0..upstreams).map(|_| Rc::default()).collect(),
        }
    }

    /// Whether host `id` picked HTTP/1.1 by ALPN and its requests take that
    /// path for now.
    pub fn http1_fallback(&self, id: UpstreamId) -> bool {
        self.http1_until[id].is_some_and(|t| Instant::now() < t)
    }

    /// Open HTTP/2 connections to host `id`.
    pub fn open_count(&self, id: UpstreamId) -> usize {
        self.conns[id].iter().filter(|c| c.inner.borrow().dead.is_none()).count()
    }
}

/// One HTTP/2 connection, shared by its task and the exchanges on it.
pub(crate) struct H2Conn {
    inner: RefCell<Inner>,
    /// Exchanges wake the connection's task (frames queued).
    to_driver: Signal,
    addr: SocketAddr,
    counters: Rc<H2Counters>,
    /// Half of `upstream.idle_timeout`: a connection read nothing from for
    /// this long is PINGed before it takes a stream.
    stale_after: Duration,
}

struct Inner {
    conn: Conn,
    slots: Vec<Slot>,
    /// Why the connection ended; no new stream goes on it.
    dead: Option<String>,
    /// Its address is no longer one of the host's (DNS moved, or marked
    /// down): no new stream goes on it, and it ends once idle.
    retired: bool,
    /// Slots of finished streams, kept for their buffers (no allocation per
    /// stream in steady state).
    spare: Vec<Slot>,
    /// Exchanges waiting on the connection (room to open a stream, window,
    /// output written), woken together when any of that changes. An
    /// exchange waiting for its own stream's answer waits in its slot.
    waiters: Vec<Waker>,
    /// Exchanges waiting for flow-control room to send their body, in the
    /// order they started waiting. A window update wakes only as many of
    /// them as the connection's window has room for (the others would wake
    /// only to wait again: 64 uploads on one connection, each woken on every
    /// WINDOW_UPDATE, cost 80 µs of user time a request).
    senders: Vec<(u32, Waker)>,
    /// When the intake last sent anything while the connection was idle,
    /// or when it last became idle (a connection in use shows it is alive
    /// by its answers; its streams' timeouts cover it).
    last_read: Instant,
    /// A PING awaiting its ACK, since then.
    ping_sent: Option<Instant>,
}

impl Inner {
    /// Queues a liveness PING unless one is out.
    fn ping(&mut self, counters: &H2Counters) {
        if self.ping_sent.is_none() && self.dead.is_none() {
            self.conn.ping(*b"fipsrly!");
            self.ping_sent = Some(Instant::now());
            bump(&counters.pings, 1);
        }
    }

    fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// Wakes the senders the connection's window has room for, first come
    /// first; a sender whose stream is gone wakes to see why.
    fn wake_senders(&mut self) {
        if self.senders.is_empty() {
            return;
        }
        let mut budget = self.conn.conn_send_room();
        let conn = &self.conn;
        self.senders.retain(|(id, w)| {
            if !conn.is_open(*id) {
                w.wake_by_ref();
                return false;
            }
            let room = if budget == 0 { 0 } else { conn.send_room(*id) };
            if room == 0 {
                return true;
            }
            budget = budget.saturating_sub(room);
            w.wake_by_ref();
            false
        });
    }

    /// The connection ended: every exchange on it looks again.
    fn wake_all(&mut self) {
        self.wake_waiters();
        for (_, w) in self.senders.drain(..) {
            w.wake();
        }
        for s in &mut self.slots {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

/// What one stream received.
#[derive(Default)]
struct Slot {
    id: u32,
    /// Status and whether HEADERS ended the stream.
    head: Option<(u16, bool)>,
    /// The answer head as HTTP/1.1.
    h1: Vec<u8>,
    data: Vec<u8>,
    ended: bool,
    reset: Option<ErrorCode>,
    /// The exchange waiting for this stream's answer.
    waker: Option<Waker>,
}

impl H2Conn {
    /// Before the connection takes a stream: an idle one the intake has
    /// been silent on for half the idle timeout is asked for a PING first.
    fn probe_if_stale(&self) {
        let mut i = self.inner.borrow_mut();
        if i.slots.is_empty() && i.ping_sent.is_none() && i.last_read.elapsed() >= self.stale_after {
            i.ping(&self.counters);
            drop(i);
            self.to_driver.notify_one();
        }
    }

    /// Waits until `f` gives a value, woken with the connection's waiters.
    async fn wait_conn<T>(&self, mut f: impl FnMut(&mut Inner) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if let Some(v) = f(&mut i) {
                return Poll::Ready(v);
            }
            if !i.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                i.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until the connection's output has room and `f` gives a value
    /// (`None`: no flow-control room): a sender queues in `senders` for the
    /// window, in `waiters` for the output.
    async fn wait_send<T>(&self, id: u32, mut f: impl FnMut(&mut Inner) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if i.conn.output_len() >= MAX_PENDING_OUTPUT && i.dead.is_none() {
                if !i.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    i.waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if let Some(v) = f(&mut i) {
                return Poll::Ready(v);
            }
            match i.senders.iter_mut().find(|(s, _)| *s == id) {
                Some(e) => e.1 = cx.waker().clone(),
                None => i.senders.push((id, cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until `f` gives a value, woken by what arrives for stream `id`.
    async fn wait_stream<T>(&self, id: u32, mut f: impl FnMut(&mut Inner) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if let Some(v) = f(&mut i) {
                return Poll::Ready(v);
            }
            match i.slots.iter_mut().find(|s| s.id == id) {
                Some(s) => s.waker = Some(cx.waker().clone()),
                None => i.waiters.push(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The stream is done with: its slot goes; a stream still open is reset.
    fn finish(&self, id: u32) {
        let mut i = self.inner.borrow_mut();
        if let Some(k) = i.slots.iter().position(|s| s.id == id) {
            let mut slot = i.slots.swap_remove(k);
            if i.spare.len() < MAX_SPARE_SLOTS && slot.data.capacity() <= SPARE_SLOT_BYTES {
                slot.h1.clear();
                slot.data.clear();
                i.spare.push(slot);
            }
        }
        i.senders.retain(|(s, _)| *s != id);
        if i.dead.is_none() {
            i.conn.cancel(id);
        }
        // Room for a stream that waits to open.
        i.wake_waiters();
        drop(i);
        self.to_driver.notify_one();
    }
}

/// Relays one request over HTTP/2. `Ok(None)`: the intake picked HTTP/1.1
/// (`auto`); the caller relays it that way (the session went to the pool).
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
) -> Result<Option<(u16, bool)>, Failure> {
    if let Some(until) = ctx.h2.borrow().http1_until[upstream] {
        if Instant::now() < until {
            return Ok(None);
        }
    }
    let mut replays = 0;
    let retries = ctx.config.retries;
    loop {
        let Some(conn) = connection(ctx, offset, upstream).await? else { return Ok(None) };
        match on_connection(ctx, down, offset, upstream, &conn, head, upstream_head, answer_buf, body).await {
            Err(Exchange::Refused(_)) if replays < retries => {
                replays += 1;
                bump(&conn.counters.replays, 1);
                tracing::info!(upstream = ctx.upstream_host(upstream), addr = %conn.addr, replays, "the intake never processed the stream (GOAWAY or REFUSED_STREAM); sent again on another connection");
                *body = BodyProgress::new(head.framing);
            }
            Err(Exchange::Refused(held)) => {
                down.consume(held);
                return Err(Failure::Upstream {
                    cause: ErrorCause::Closed,
                    detail: format!(
                        "the intake refused the stream {} times (REFUSED_STREAM or GOAWAY; upstream.retries = {retries})",
                        replays + 1
                    ),
                    addr: Some(conn.addr),
                });
            }
            Err(Exchange::Failed(f)) => return Err(f),
            Ok(done) => return Ok(Some(done)),
        }
    }
}

/// How an exchange on one connection ended badly.
enum Exchange {
    /// The intake never processed the stream, and the request can be sent
    /// again as it was: its body, this many bytes, is still at the front of
    /// the Agent buffer (the caller consumes it if it gives up).
    Refused(usize),
    Failed(Failure),
}

impl From<Failure> for Exchange {
    fn from(f: Failure) -> Self {
        Exchange::Failed(f)
    }
}

/// One attempt of the exchange on `conn`.
#[allow(clippy::too_many_arguments)]
async fn on_connection<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    upstream: UpstreamId,
    conn: &Rc<H2Conn>,
    head: &RequestHead,
    upstream_head: &mut Vec<u8>,
    answer_buf: &mut Vec<u8>,
    body: &mut BodyProgress,
) -> Result<(u16, bool), Exchange> {
    let addr = conn.addr;
    let upstream_fail = |cause: ErrorCause, detail: String| Failure::Upstream { cause, detail, addr: Some(addr) };
    let overloaded = || {
        Exchange::Failed(upstream_fail(
            ErrorCause::Overloaded,
            format!(
                "every HTTP/2 connection to the intake is at its stream limit and {} requests wait \
                 (upstream.h2_max_connections = {}, upstream.h2_max_queued = {})",
                ctx.config.h2_max_queued, ctx.config.h2_max_connections, ctx.config.h2_max_queued
            ),
        ))
    };

    // A connection at its stream limit: the exchange queues, if there is room.
    let _queued = if conn.inner.borrow().conn.can_open() {
        None
    } else {
        let mut hosts = ctx.h2.borrow_mut();
        if hosts.queued[upstream] >= ctx.config.h2_max_queued {
            return Err(overloaded());
        }
        hosts.queued[upstream] += 1;
        Some(Queued { hosts: &ctx.h2, upstream })
    };

    // Open the stream (waiting, bounded, while the intake's stream limit is reached).
    let no_body = body.done() && !head.expect_continue;
    let open = conn.wait_conn(|i| {
        if i.dead.is_some() || i.conn.going_away() {
            // Nothing of this request was sent on this connection: another
            // one takes it.
            return Some(Err(None));
        }
        // A stale connection's PING not answered yet, or no stream free.
        if i.ping_sent.is_some() || !i.conn.can_open() {
            return None;
        }
        let opened = i.conn.open(upstream_head, no_body).map_err(|e| Some(e.to_string()));
        if let Ok(id) = opened {
            let mut slot = i.spare.pop().unwrap_or_default();
            slot.id = id;
            slot.head = None;
            slot.ended = false;
            slot.reset = None;
            slot.waker = None;
            i.slots.push(slot);
        }
        Some(opened)
    });
    let id = match crate::rt::timeout(ctx.config.connect_timeout, open).await {
        Err(_) => {
            return Err(Exchange::Failed(upstream_fail(
                ErrorCause::Overloaded,
                format!(
                    "every HTTP/2 connection to the intake is at its stream limit (upstream.h2_max_connections = {})",
                    ctx.config.h2_max_connections
                ),
            )))
        }
        Ok(Err(None)) => return Err(Exchange::Refused(0)),
        Ok(Err(Some(why))) => return Err(upstream_fail(ErrorCause::Closed, why).into()),
        Ok(Ok(id)) => id,
    };
    drop(_queued);
    bump(&conn.counters.streams, 1);
    conn.to_driver.notify_one();
    let _stream = StreamGuard { conn, id };
    let mut held = 0;
    match exchange(ctx, down, offset, conn, id, head, upstream_head, answer_buf, body, &mut held).await {
        Err(Exchange::Refused(_)) => Err(Exchange::Refused(held)),
        other => {
            // Answered or failed: the body the Agent buffer held is done with.
            down.consume(held);
            other
        }
    }
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

/// An exchange waiting for a stream; it stops counting however the wait ends.
struct Queued<'a> {
    hosts: &'a RefCell<H2Hosts>,
    upstream: UpstreamId,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.hosts.borrow_mut().queued[self.upstream] -= 1;
    }
}

/// A live connection to `upstream` with room for a stream, or a new one.
async fn connection<B: Backend>(
    ctx: &WorkerCtx<B>,
    offset: u16,
    upstream: UpstreamId,
) -> Result<Option<Rc<H2Conn>>, Failure> {
    // Read the clock only if the exchange has to wait.
    let mut deadline = None;
    let resolved = ctx.directory.get(upstream);
    loop {
        let opened = ctx.h2.borrow().opened.clone();
        let mut wait = pin!(opened.notified());
        wait.as_mut().enable();
        {
            let mut hosts = ctx.h2.borrow_mut();
            let opening = hosts.opening[upstream];
            let conns = &mut hosts.conns[upstream];
            conns.retain(|c| c.inner.borrow().dead.is_none());
            // Connections to an address the host no longer has, or that is
            // marked down, take no new stream (as pooled HTTP/1.1 sessions).
            conns.retain(|c| {
                let keep = resolved.endpoints.iter().any(|e| e.addr == c.addr && e.is_up());
                if !keep {
                    c.inner.borrow_mut().retired = true;
                    c.to_driver.notify_one();
                }
                keep
            });
            if let Some(c) = conns.iter().find(|c| c.inner.borrow().conn.can_open()) {
                c.probe_if_stale();
                return Ok(Some(c.clone()));
            }
            // A connection the intake is closing (GOAWAY) takes no stream
            // and does not count against the limit.
            conns.retain(|c| !c.inner.borrow().conn.going_away());
            if conns.len() + opening < ctx.config.h2_max_connections {
                hosts.opening[upstream] += 1;
                break;
            }
            if !conns.is_empty() && opening == 0 {
                // All at their limit: the least busy one (the stream waits there).
                return Ok(conns.iter().min_by_key(|c| c.inner.borrow().conn.active()).cloned());
            }
        }
        // Another exchange is opening the connection this one will use.
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + ctx.config.connect_timeout);
        if crate::rt::timeout(deadline.saturating_duration_since(Instant::now()), wait).await.is_err() {
            return Err(Failure::Upstream {
                cause: ErrorCause::ConnectTimeout,
                detail: "no HTTP/2 connection to the intake within upstream.connect_timeout".into(),
                addr: None,
            });
        }
    }
    let _opening = Opening { hosts: &ctx.h2, upstream };
    open_connection(ctx, offset, upstream).await
}

/// One connection being opened; however the opening ends (done, failed,
/// or dropped with its Agent connection), it stops counting.
struct Opening<'a> {
    hosts: &'a RefCell<H2Hosts>,
    upstream: UpstreamId,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut hosts = self.hosts.borrow_mut();
        hosts.opening[self.upstream] -= 1;
        hosts.opened.notify_waiters();
    }
}

/// Opens a session for a new HTTP/2 connection and starts its task.
async fn open_connection<B: Backend>(
    ctx: &WorkerCtx<B>,
    offset: u16,
    upstream: UpstreamId,
) -> Result<Option<Rc<H2Conn>>, Failure> {
    let (lease, _) = acquire(ctx, offset, upstream, false).await?;
    if !lease.session.is_h2() {
        if ctx.config.protocol == UpstreamProtocol::H2 {
            return Err(Failure::Upstream {
                cause: ErrorCause::BadAnswer,
                detail:
                    "the intake did not pick h2 by ALPN and upstream.protocol = \"h2\"; set it to \"auto\" or \"http1\""
                        .into(),
                addr: Some(lease.addr),
            });
        }
        tracing::info!(
            upstream = ctx.upstream_host(upstream),
            "the intake picked HTTP/1.1 by ALPN; its requests go over HTTP/1.1"
        );
        ctx.h2.borrow_mut().http1_until[upstream] = Some(Instant::now() + HTTP1_RECHECK);
        lease.give_back(Instant::now());
        return Ok(None);
    }
    let session = lease.detach();
    let local = LocalSettings {
        stream_window: ctx.config.h2_stream_window,
        conn_window: ctx.config.h2_connection_window,
        ..LocalSettings::default()
    };
    let conn = Rc::new(H2Conn {
        inner: RefCell::new(Inner {
            conn: Conn::new(local),
            slots: Vec::new(),
            dead: None,
            retired: false,
            spare: Vec::new(),
            waiters: Vec::new(),
            senders: Vec::new(),
            last_read: Instant::now(),
            ping_sent: None,
        }),
        to_driver: Signal::default(),
        addr: session.addr,
        counters: ctx.h2.borrow().counters[upstream].clone(),
        stale_after: ctx.config.upstream_idle_timeout / 2,
    });
    tracing::debug!(upstream = ctx.upstream_host(upstream), addr = %session.addr, "HTTP/2 connection opened");
    ctx.h2.borrow_mut().conns[upstream].push(conn.clone());
    let timeouts = Timeouts {
        write: ctx.config.response_timeout,
        idle: ctx.config.upstream_idle_timeout,
        ping: ctx.config.connect_timeout,
    };
    crate::rt::spawn(drive(conn.clone(), session, timeouts));
    Ok(Some(conn))
}

/// A connection task's limits.
struct Timeouts {
    /// A write the intake takes no byte of for this long ends the connection.
    write: Duration,
    /// No stream for this long: the connection closes.
    idle: Duration,
    /// A PING not acknowledged within this ends the connection.
    ping: Duration,
}

/// Frames in `out` (whole frames, as the connection queues them).
fn count_frames(out: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while at + 9 <= out.len() {
        let len = (out[at] as usize) << 16 | (out[at + 1] as usize) << 8 | out[at + 2] as usize;
        at += 9 + len;
        n += 1;
    }
    n
}

/// The connection's task: writes what is queued, reads and files what
/// comes, until the connection fails, the intake closes it or stops
/// answering PINGs, or it has been idle (no stream) for `idle_timeout`.
async fn drive<S: Stream>(conn: Rc<H2Conn>, mut session: PooledSession<S>, limits: Timeouts) {
    let mut rbuf: Vec<u8> = Vec::with_capacity(4 * IO_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(4 * IO_BUF);
    let mut idle_since = Instant::now();
    let mut was_busy = false;
    let counters = conn.counters.clone();
    let why = loop {
        std::mem::swap(conn.inner.borrow_mut().conn.output(), &mut out);
        if !out.is_empty() {
            // The preface's 24 bytes are not a frame.
            let frames = if out.starts_with(crate::h2::frame::PREFACE) {
                count_frames(&out[crate::h2::frame::PREFACE.len()..])
            } else {
                count_frames(&out)
            };
            bump(&counters.writes, 1);
            bump(&counters.frames, frames);
            let write = crate::rt::timeout(limits.write, session.session.write_plain(&out)).await;
            out.clear();
            let mut i = conn.inner.borrow_mut();
            i.wake_waiters();
            i.wake_senders();
            drop(i);
            match write {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => break format!("writing to the intake failed: {e}"),
                Err(_) => break format!("the intake stopped reading for {:?}", limits.write),
            }
        }
        if let Some(why) = conn.inner.borrow().dead.clone() {
            break why;
        }
        let busy = !conn.inner.borrow().slots.is_empty();
        if !busy && conn.inner.borrow().conn.going_away() {
            break "the intake sent GOAWAY".to_string();
        }
        if !busy && conn.inner.borrow().retired {
            let mut i = conn.inner.borrow_mut();
            crate::h2::frame::write_goaway(i.conn.output(), 0, ErrorCode::NoError);
            i.dead = Some("its address is no longer the host's".into());
            continue;
        }
        // The clock is read when the connection becomes idle, not every turn.
        if busy {
            was_busy = true;
        } else if was_busy {
            was_busy = false;
            idle_since = Instant::now();
            conn.inner.borrow_mut().last_read = idle_since;
        }
        if rbuf.len() == rbuf.capacity() {
            rbuf.reserve(IO_BUF);
        }
        // What the clock may do next: end a PING's wait, PING a connection
        // silent for half the idle timeout, or close an idle one.
        let (last_read, ping_sent) = {
            let i = conn.inner.borrow();
            (i.last_read, i.ping_sent)
        };
        let timer = match ping_sent {
            Some(sent) => Some(sent + limits.ping),
            None if !busy => Some((idle_since + limits.idle).min(last_read + conn.stale_after)),
            None => None,
        };
        tokio::select! {
            biased;
            _ = conn.to_driver.notified() => continue,
            r = session.session.read_plain_ready(&mut rbuf) => match r {
                Ok(0) => break "the intake closed the connection".to_string(),
                Err(e) => break format!("the intake connection failed: {e}"),
                Ok(_) => {}
            },
            _ = crate::rt::sleep_until(timer.unwrap_or(idle_since)), if timer.is_some() => {
                let now = Instant::now();
                let mut i = conn.inner.borrow_mut();
                if ping_sent.is_some() {
                    let why = format!("the intake did not answer a PING within {:?}", limits.ping);
                    tracing::warn!(addr = %conn.addr, "HTTP/2 connection to the intake cut: {why}");
                    i.dead = Some(why);
                    i.wake_all();
                } else if now >= idle_since + limits.idle {
                    crate::h2::frame::write_goaway(i.conn.output(), 0, ErrorCode::NoError);
                    i.dead = Some("idle".into());
                } else {
                    i.ping(&counters);
                }
                continue;
            }
        }
        let mut i = conn.inner.borrow_mut();
        if !busy {
            i.last_read = Instant::now();
        }
        let Inner { conn: c, slots, waiters, senders, ping_sent, .. } = &mut *i;
        let res = c.receive(&rbuf, |c, ev| file(slots, waiters, senders, ping_sent, c, &rbuf, ev));
        match res {
            Ok(used) => {
                rbuf.drain(..used);
                i.wake_senders();
            }
            Err(e) => {
                tracing::warn!(addr = %conn.addr, error = %e, "HTTP/2 connection to the intake cut");
                i.dead = Some(e.to_string());
                i.wake_all();
                // The GOAWAY is queued: the loop writes it, then ends.
            }
        }
    };
    let mut i = conn.inner.borrow_mut();
    if i.dead.is_none() {
        tracing::debug!(addr = %conn.addr, why = %why, "HTTP/2 connection ended");
        i.dead = Some(why);
    }
    i.wake_all();
}

/// Files one event under its stream's slot and wakes who waits for it.
fn file(
    slots: &mut [Slot],
    waiters: &mut Vec<Waker>,
    senders: &mut Vec<(u32, Waker)>,
    ping_sent: &mut Option<Instant>,
    c: &Conn,
    input: &[u8],
    ev: Event,
) {
    let find = |slots: &mut [Slot], id: u32| slots.iter_mut().position(|s| s.id == id);
    let wake = |s: &mut Slot| {
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    };
    match ev {
        Event::Head { stream, status, end_stream } => {
            if let Some(k) = find(slots, stream) {
                let s = &mut slots[k];
                s.h1.clear();
                s.h1.extend_from_slice(c.answer_head());
                s.head = Some((status, end_stream));
                s.ended |= end_stream;
                wake(s);
            }
        }
        Event::Data { stream, range, end_stream } => {
            if let Some(k) = find(slots, stream) {
                slots[k].data.extend_from_slice(&input[range]);
                slots[k].ended |= end_stream;
                wake(&mut slots[k]);
            }
        }
        Event::Reset { stream, code } => {
            if let Some(k) = find(slots, stream) {
                slots[k].reset = Some(code);
                wake(&mut slots[k]);
            }
            // A reset stream may have been waiting for window room.
            for w in waiters.drain(..) {
                w.wake();
            }
            for (_, w) in senders.drain(..) {
                w.wake();
            }
        }
        Event::GoAway { last_stream, .. } => {
            for s in slots.iter_mut().filter(|s| s.id > last_stream && !s.ended) {
                s.reset = Some(ErrorCode::RefusedStream);
                wake(s);
            }
            for w in waiters.drain(..) {
                w.wake();
            }
            for (_, w) in senders.drain(..) {
                w.wake();
            }
        }
        Event::WindowOpen => {
            for w in waiters.drain(..) {
                w.wake();
            }
        }
        Event::PingAck(_) => {
            // Alive: exchanges that waited for it open their streams.
            *ping_sent = None;
            for w in waiters.drain(..) {
                w.wake();
            }
        }
    }
}

/// Sends the body and relays the answer of stream `id`.
#[allow(clippy::too_many_arguments)]
async fn exchange<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    offset: u16,
    conn: &H2Conn,
    id: u32,
    head: &RequestHead,
    upstream_head: &mut Vec<u8>,
    answer_buf: &mut Vec<u8>,
    body: &mut BodyProgress,
    held_out: &mut usize,
) -> Result<(u16, bool), Exchange> {
    let addr = conn.addr;
    let lost = |why: String| Failure::Upstream { cause: ErrorCause::Closed, detail: why, addr: Some(addr) };
    // A body that is all in the Agent buffer already (a typical Agent
    // request) stays there until the answer head: a refused stream can then
    // be sent again as it was.
    let held = match body {
        BodyProgress::Length { left, .. } if !head.expect_continue && *left as usize <= down.filled().len() => {
            Some(*left as usize)
        }
        _ => None,
    };
    let mut replayable = held.is_some() || body.done();
    let mut offset_in_buf = 0usize;
    if head.expect_continue && !body.done() {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        down.write(&mut cont).await.map_err(|e| Failure::Downstream(e.to_string()))?;
    }
    let idle = ctx.config.client_idle_timeout;
    let mut copied = 0u64;
    let mut sent_end = body.done() && !head.expect_continue;
    while !sent_end {
        if down.filled().len() == offset_in_buf && !body.done() {
            super::exchange::read_body(down, idle, &ctx.buffers).await?;
        }
        // The payload at the front of the Agent's buffer: Content-Length
        // bytes as they are, chunked ones decoded in place.
        let (consumed, payload) = match body {
            BodyProgress::Length { .. } => {
                let n = body.take(&down.filled()[offset_in_buf..], usize::MAX, ctx.config.max_body_bytes)?;
                (n, n)
            }
            BodyProgress::Chunked(scanner) => {
                let start = down.start;
                let (c, p) =
                    scanner.dechunk(&mut down.buf[start..]).map_err(|e| Failure::Refused(RequestError::Chunked(e)))?;
                if scanner.payload > ctx.config.max_body_bytes {
                    return Err(Failure::Refused(RequestError::BodyTooLarge {
                        len: scanner.payload,
                        limit: ctx.config.max_body_bytes,
                    })
                    .into());
                }
                (c, p)
            }
        };
        if payload == 0 && !body.done() {
            down.consume(consumed);
            replayable = false;
            continue;
        }
        // Sends `payload` bytes; however that ends, the `consumed` input
        // bytes are taken off the Agent buffer (or counted as held), so a
        // failure never leaves body bytes to be read as a request.
        let sent = async {
            let mut at = 0;
            loop {
                let last = at == payload && body.done();
                // Room in the stream's window and the connection's output.
                let room = conn
                    .wait_send(id, |i| {
                        if let Some(why) = &i.dead {
                            return Some(Err(why.clone()));
                        }
                        if let Some(s) = i.slots.iter().find(|s| s.id == id) {
                            if let Some(code) = s.reset {
                                return Some(Err(format!(
                                    "the intake reset the stream ({code:?}) before the body was sent"
                                )));
                            }
                        }
                        let room = i.conn.send_room(id);
                        (room > 0 || (last && at == payload)).then_some(Ok(room))
                    })
                    .await
                    .map_err(lost)?;
                let n = room.min(payload - at);
                let end = last || (at + n == payload && body.done());
                let from = down.start + offset_in_buf + at;
                let chunk = &down.buf[from..from + n];
                conn.inner.borrow_mut().conn.data(id, chunk, end).map_err(|e| lost(e.to_string()))?;
                conn.to_driver.notify_one();
                // Copied into the connection's frames, and again when they
                // are sealed (the HTTP/1.1 path reads bodies straight into
                // records; DATA payloads do not, yet).
                copied += 2 * n as u64;
                at += n;
                if end || at == payload {
                    return Ok::<bool, Failure>(end);
                }
            }
        }
        .await;
        if held.is_some() {
            offset_in_buf += consumed;
            *held_out = offset_in_buf;
        } else {
            down.consume(consumed);
            replayable = false;
        }
        sent_end = sent?;
    }

    // Held in the Agent buffer until the caller knows whether it goes again.
    *held_out = offset_in_buf;

    // The answer head (interim ones skipped), bounded by the response timeout
    // and the drain deadline.
    let client = ClientConn { close: head.close || (ctx.draining().is_some() && !ctx.handing_over()), ..head.client() };
    let wait_head = conn.wait_stream(id, |i| {
        let dead = i.dead.clone();
        let s = i.slots.iter_mut().find(|s| s.id == id)?;
        if let Some((status, _)) = s.head {
            if (100..200).contains(&status) {
                s.head = None;
                return None;
            }
            answer_buf.clear();
            answer_buf.extend_from_slice(&s.h1);
            return Some(Ok(()));
        }
        if let Some(code) = s.reset {
            return Some(Err((code, String::new())));
        }
        dead.map(|why| Err((ErrorCode::Internal, why)))
    });
    let waited = tokio::select! {
        r = crate::rt::timeout(ctx.config.response_timeout, wait_head) => r,
        _ = ctx.drain_deadline() => return Err(Failure::Upstream {
            cause: ErrorCause::Draining,
            detail: "the relay is shutting down and its drain timeout passed".into(),
            addr: Some(addr),
        }.into()),
    };
    match waited {
        Err(_) => {
            return Err(Failure::Upstream {
                cause: ErrorCause::Timeout,
                detail: format!("no answer within upstream.response_timeout ({:?})", ctx.config.response_timeout),
                addr: Some(addr),
            }
            .into())
        }
        Ok(Err((ErrorCode::RefusedStream, _))) if replayable => return Err(Exchange::Refused(offset_in_buf)),
        Ok(Err((ErrorCode::RefusedStream, _))) => {
            return Err(Failure::Upstream {
                cause: ErrorCause::Closed,
                detail: "the intake refused the stream (REFUSED_STREAM or GOAWAY) after its body had gone".into(),
                addr: Some(addr),
            }
            .into())
        }
        Ok(Err((code, why))) if why.is_empty() => {
            return Err(lost(format!("the intake reset the stream ({code:?}) before answering")).into())
        }
        Ok(Err((_, why))) => return Err(lost(format!("{why} before the answer")).into()),
        Ok(Ok(())) => {}
    };
    {
        let mut stats = ctx.stats.borrow_mut();
        let p = stats.product(offset);
        p.bytes_in += body.payload();
        p.bytes_copied += copied;
    }
    let answer_head =
        http1::parse_response(answer_buf, ctx.config.max_header_bytes, head.method, client, upstream_head)
            .map_err(|e| Failure::Upstream { cause: ErrorCause::BadAnswer, detail: e.to_string(), addr: Some(addr) })?
            .ok_or_else(|| lost("an incomplete answer head (a relay bug)".into()))?;

    // The body, as it comes; each piece released to flow control once written.
    let mut answer = AnswerOut { head: upstream_head, head_pending: true, copied: 0 };
    let chunked = answer_head.framing == BodyFraming::Chunked && !answer_head.dechunk;
    let mut sent: u64 = 0;
    loop {
        let next = conn.wait_stream(id, |i| {
            let dead = i.dead.clone();
            let s = i.slots.iter_mut().find(|s| s.id == id)?;
            if !s.data.is_empty() || s.ended {
                answer_buf.clear();
                answer_buf.extend_from_slice(&s.data);
                s.data.clear();
                return Some(Ok(s.ended));
            }
            if let Some(code) = s.reset {
                return Some(Err(format!("the intake reset the stream ({code:?}) mid-answer")));
            }
            dead.map(|why| Err(format!("{why} mid-answer")))
        });
        let ended = match crate::rt::timeout(ctx.config.response_timeout, next).await {
            Err(_) => {
                return Err(answer
                    .fail(ErrorCause::Timeout, "the intake stopped sending its answer".into(), addr)
                    .into())
            }
            Ok(Err(why)) => return Err(answer.fail(ErrorCause::Closed, why, addr).into()),
            Ok(Ok(ended)) => ended,
        };
        let n = answer_buf.len();
        sent += n as u64;
        conn.inner.borrow_mut().conn.release(id, n);
        conn.to_driver.notify_one();
        if chunked {
            let mut framed = Vec::with_capacity(n + 16);
            if n > 0 {
                framed.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                framed.extend_from_slice(answer_buf);
                framed.extend_from_slice(b"\r\n");
            }
            if ended {
                framed.extend_from_slice(b"0\r\n\r\n");
            }
            *answer_buf = framed;
        }
        let len = answer_buf.len();
        answer.send(down, answer_buf, len).await?;
        if ended {
            break;
        }
    }
    answer.finish(down).await?;
    if let BodyFraming::Length(total) = answer_head.framing {
        if sent != total {
            return Err(Failure::AnswerCut {
                cause: ErrorCause::BadAnswer,
                detail: format!("the intake's DATA ({sent} bytes) does not match its content-length ({total})"),
            }
            .into());
        }
    }
    {
        let mut stats = ctx.stats.borrow_mut();
        let p = stats.product(offset);
        p.bytes_out += sent;
        p.bytes_copied += answer.copied + sent;
    }
    Ok((answer_head.status, !answer_head.client.close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(ids: &[u32]) -> Vec<Slot> {
        ids.iter().map(|&id| Slot { id, ..Slot::default() }).collect()
    }

    #[test]
    fn goaway_refuses_only_the_streams_above_its_last_stream_id() {
        let conn = Conn::new(LocalSettings::default());
        let mut s = slots(&[1, 3, 5, 7]);
        s[3].ended = true;
        let (mut waiters, mut senders, mut ping) = (Vec::new(), Vec::new(), None);
        file(
            &mut s,
            &mut waiters,
            &mut senders,
            &mut ping,
            &conn,
            &[],
            Event::GoAway { last_stream: 3, code: ErrorCode::NoError },
        );
        let reset: Vec<_> = s.iter().map(|s| (s.id, s.reset)).collect();
        // 5 was never processed: refused (sent again); 7 had its whole
        // answer already; 1 and 3 go on.
        assert_eq!(reset, vec![(1, None), (3, None), (5, Some(ErrorCode::RefusedStream)), (7, None)]);
    }

    #[test]
    fn a_ping_ack_ends_the_wait_for_it() {
        let conn = Conn::new(LocalSettings::default());
        let mut s = slots(&[1]);
        let (mut waiters, mut senders, mut ping) = (Vec::new(), Vec::new(), Some(Instant::now()));
        file(&mut s, &mut waiters, &mut senders, &mut ping, &conn, &[], Event::PingAck(*b"fipsrly!"));
        assert_eq!(ping, None);
    }

    #[test]
    fn frames_are_counted_by_their_headers() {
        let mut out = Vec::new();
        crate::h2::frame::write_ping(&mut out, false, [0; 8]);
        crate::h2::frame::data_head(&mut out, 1, 3, true);
        out.extend_from_slice(b"abc");
        crate::h2::frame::write_rst_stream(&mut out, 1, ErrorCode::Cancel);
        assert_eq!(count_frames(&out), 3);
        assert_eq!(count_frames(&[]), 0);
    }
}
