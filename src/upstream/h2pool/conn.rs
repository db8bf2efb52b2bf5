//! One HTTP/2 connection to the intake as its exchanges see it: the
//! protocol state ([`Conn`]), one slot per stream where the connection's
//! task files what arrived, and the waits of the exchanges (room to open a
//! stream, flow-control room to send, their stream's answer).
//!
//! # Backpressure
//! An exchange queues body frames only while the connection's output is
//! below [`MAX_PENDING_OUTPUT`] and its stream's window has room; senders
//! waiting for window room queue first come first served, and a window
//! update wakes only as many as the connection's window has room for (64
//! uploads on one connection, each woken on every WINDOW_UPDATE, cost
//! 80 µs of user time a request).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::H2Counters;
use crate::fault::Cause;
use crate::h2::conn::{Conn, ConnError};
use crate::h2::frame::ErrorCode;
use crate::h2::headers::{AnswerHead, HeaderError};
use crate::logging::summary::Summaries;
use crate::rt::{Mark, Signal};

/// Plaintext queued on a connection beyond which exchanges wait for the
/// connection's task to write it before they queue more body.
pub const MAX_PENDING_OUTPUT: usize = 256 * 1024;
/// Finished streams' slots kept per connection for reuse, and the largest
/// answer buffer one may keep.
const MAX_SPARE_SLOTS: usize = 64;
const SPARE_SLOT_BYTES: usize = 64 * 1024;

/// Why a connection ended (every stream on it sees this).
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    #[error("writing to the intake failed: {0}")]
    Write(io::Error),
    #[error("the intake stopped reading for {0:?}")]
    WriteStalled(Duration),
    #[error("the intake closed the connection")]
    Closed,
    #[error("the intake connection failed: {0}")]
    Read(io::Error),
    #[error(transparent)]
    Protocol(ConnError),
    #[error("the intake did not answer a PING within {0:?}")]
    PingUnanswered(Duration),
    #[error("the connection was idle")]
    Idle,
    #[error("its address is no longer the host's")]
    Retired,
    #[error("the intake sent GOAWAY")]
    GoAway,
}

impl ConnEnd {
    /// The step it counts as: a TLS failure keeps its rustls cause.
    pub fn cause(&self) -> Cause {
        match self {
            ConnEnd::Write(e) | ConnEnd::Read(e) if crate::upstream::tls::is_tls_error(e) => Cause::Tls,
            ConnEnd::Protocol(_) => Cause::BadAnswer,
            _ => Cause::Closed,
        }
    }
}

/// What went wrong with one stream, as its exchange sees it.
#[derive(Debug, thiserror::Error)]
pub enum StreamFault {
    #[error("the intake reset the stream ({0:?})")]
    Reset(ErrorCode),
    #[error("{0}")]
    Lost(Rc<ConnEnd>),
    #[error("the request head cannot go out as HTTP/2: {0}")]
    Head(HeaderError),
    #[error(transparent)]
    Protocol(ConnError),
}

impl StreamFault {
    pub fn cause(&self) -> Cause {
        match self {
            StreamFault::Lost(end) => end.cause(),
            _ => Cause::Closed,
        }
    }
}

/// One HTTP/2 connection, shared by its task and the exchanges on it.
pub struct H2Conn {
    pub(super) inner: RefCell<Inner>,
    /// Exchanges wake the connection's task (frames queued).
    pub(super) to_driver: Signal,
    /// The connection's state changed (a stream may open, output was
    /// written, a window opened, a PING was answered, it ended).
    pub(super) changed: Signal,
    pub addr: SocketAddr,
    pub counters: Rc<H2Counters>,
    /// The worker's "stats changed" mark (see `H2Hosts`).
    pub(super) stats: Rc<Mark>,
    /// The intake host, and the worker's log summaries, where a cut
    /// connection is counted.
    pub(super) host: Box<str>,
    pub(super) log: Rc<Summaries>,
    /// Half of `upstream.idle_timeout`: a connection read nothing from for
    /// this long is PINGed before it takes a stream.
    pub(super) stale_after: Duration,
    /// Writes what is queued now if the socket takes it (`drive::write_now`
    /// on the connection's shared session); true when nothing is left.
    pub(super) writer: Writer,
}

/// [`H2Conn::writer`]: the session's type stays out of the connection's.
pub(super) type Writer = Box<dyn Fn(&H2Conn) -> bool>;

pub(super) struct Inner {
    pub(super) conn: Conn,
    pub(super) slots: Vec<Slot>,
    /// Why the connection ended; no new stream goes on it.
    pub(super) dead: Option<Rc<ConnEnd>>,
    /// Its address is no longer one of the host's (DNS moved, or marked
    /// down): no new stream goes on it, and it ends once idle.
    pub(super) retired: bool,
    /// Slots of finished streams, kept for their buffers (no allocation per
    /// stream in steady state).
    spare: Vec<Slot>,
    /// Exchanges waiting for flow-control room to send their body, in the
    /// order they started waiting (see the module's Backpressure).
    pub(super) senders: Vec<(u32, Waker)>,
    /// When the intake last sent anything while the connection was idle,
    /// or when it last became idle (a connection in use shows it is alive
    /// by its answers; its streams' timeouts cover it).
    pub(super) last_read: Instant,
    /// A PING awaiting its ACK, since then.
    pub(super) ping_sent: Option<Instant>,
}

/// What one stream received.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) id: u32,
    /// Status and whether HEADERS ended the stream.
    pub(super) head: Option<(u16, bool)>,
    /// The answer head's fields.
    pub(super) answer: AnswerHead,
    pub(super) data: Vec<u8>,
    pub(super) ended: bool,
    pub(super) reset: Option<ErrorCode>,
    /// The exchange waiting for this stream's answer.
    pub(super) waker: Option<Waker>,
}

impl Slot {
    pub(super) fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A stream could not be opened on this connection.
pub enum OpenRefused {
    /// The connection ended or is going away: nothing of the request went
    /// on it, another connection takes it.
    Elsewhere,
    Fault(StreamFault),
}

impl Inner {
    pub(super) fn new(conn: Conn) -> Inner {
        Inner {
            conn,
            slots: Vec::new(),
            dead: None,
            retired: false,
            spare: Vec::new(),
            senders: Vec::new(),
            last_read: Instant::now(),
            ping_sent: None,
        }
    }

    /// Queues a liveness PING unless one is out.
    pub(super) fn ping(&mut self, counters: &H2Counters) {
        if self.ping_sent.is_none() && self.dead.is_none() {
            self.conn.ping(*b"fipsrly!");
            self.ping_sent = Some(Instant::now());
            super::bump(&counters.pings, 1);
        }
    }

    /// Wakes the senders the connection's window has room for, first come
    /// first; a sender whose stream is gone wakes to see why.
    pub(super) fn wake_senders(&mut self) {
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

    /// Wakes every sender, whatever the window (a stream was reset, or the
    /// connection is going away).
    pub(super) fn wake_every_sender(&mut self) {
        for (_, w) in self.senders.drain(..) {
            w.wake();
        }
    }

    /// The stream's fault, if it has one: its reset first (a stream a
    /// GOAWAY refused stays refused, and goes again, when the connection
    /// then closes), else the connection's end.
    fn fault(&self, id: u32) -> Option<StreamFault> {
        if let Some(code) = self.slots.iter().find(|s| s.id == id).and_then(|s| s.reset) {
            return Some(StreamFault::Reset(code));
        }
        self.dead.as_ref().map(|end| StreamFault::Lost(end.clone()))
    }

    fn slot(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }
}

impl H2Conn {
    pub(super) fn new(
        conn: Conn,
        addr: SocketAddr,
        counters: Rc<H2Counters>,
        stats: Rc<Mark>,
        stale_after: Duration,
        (host, log): (&str, Rc<Summaries>),
        writer: Writer,
    ) -> H2Conn {
        H2Conn {
            stats,
            inner: RefCell::new(Inner::new(conn)),
            to_driver: Signal::default(),
            changed: Signal::default(),
            addr,
            counters,
            host: host.into(),
            log,
            stale_after,
            writer,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.inner.borrow().dead.is_some()
    }

    /// Whether a stream can open now (under the intake's limit).
    pub fn can_open(&self) -> bool {
        self.inner.borrow().conn.can_open()
    }

    /// Ends the connection (its task writes what is queued, then stops) and
    /// wakes everyone on it.
    pub(super) fn end(&self, why: ConnEnd) {
        let mut i = self.inner.borrow_mut();
        if i.dead.is_none() {
            i.dead = Some(Rc::new(why));
        }
        i.wake_every_sender();
        for s in &mut i.slots {
            s.wake();
        }
        drop(i);
        self.changed.notify();
        self.stats.set();
    }

    /// Before the connection takes a stream: an idle one the intake has
    /// been silent on for half the idle timeout is asked for a PING first.
    pub(super) fn probe_if_stale(&self) {
        let mut i = self.inner.borrow_mut();
        if i.slots.is_empty() && i.ping_sent.is_none() && i.last_read.elapsed() >= self.stale_after {
            i.ping(&self.counters);
            drop(i);
            self.stats.set();
            self.to_driver.notify();
        }
    }

    /// Opens a stream for the rendered request head (`end`: no body),
    /// waiting while a PING is unanswered or the intake's stream limit is
    /// reached. The caller bounds the wait.
    pub async fn open_stream(&self, head: &[u8], end: bool) -> Result<u32, OpenRefused> {
        let opened = self
            .changed
            .wait_for(|| {
                let mut i = self.inner.borrow_mut();
                if i.dead.is_some() || i.conn.going_away() {
                    return Some(Err(OpenRefused::Elsewhere));
                }
                if i.ping_sent.is_some() || !i.conn.can_open() {
                    return None;
                }
                Some(i.conn.open(head, end).map_err(|e| OpenRefused::Fault(StreamFault::Head(e))))
            })
            .await?;
        let mut i = self.inner.borrow_mut();
        let mut slot = i.spare.pop().unwrap_or_default();
        slot.id = opened;
        slot.head = None;
        slot.ended = false;
        slot.reset = None;
        slot.waker = None;
        i.slots.push(slot);
        drop(i);
        super::bump(&self.counters.streams, 1);
        // HEADERS wait for the exchange's body, and go with it (`write_now`).
        Ok(opened)
    }

    /// Waits for room to send DATA on stream `id`: the connection's output
    /// below [`MAX_PENDING_OUTPUT`] and room in the stream's window (or
    /// none needed, for an empty last frame). Returns the window's room.
    /// What is queued is written ([`Self::write_now`]) before it waits.
    pub async fn send_room(&self, id: u32, empty_end: bool) -> Result<usize, StreamFault> {
        let mut waiter = self.changed.waiter();
        std::future::poll_fn(|cx| {
            let mut wrote = false;
            loop {
                let mut i = self.inner.borrow_mut();
                if let Some(f) = i.fault(id) {
                    return Poll::Ready(Err(f));
                }
                let full = i.conn.output_len() >= MAX_PENDING_OUTPUT;
                let room = i.conn.send_room(id);
                if !full && (room > 0 || empty_end) {
                    return Poll::Ready(Ok(room));
                }
                if !wrote {
                    // Writing may make room in the output (and the window
                    // may have opened meanwhile): look again once.
                    drop(i);
                    self.write_now();
                    wrote = true;
                    continue;
                }
                if full {
                    waiter.register(cx.waker());
                } else {
                    match i.senders.iter_mut().find(|(s, _)| *s == id) {
                        Some(e) => e.1 = cx.waker().clone(),
                        None => i.senders.push((id, cx.waker().clone())),
                    }
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Queues `chunk` as DATA on stream `id`; the exchange writes it with
    /// [`Self::write_now`] before it waits.
    pub fn send_data(&self, id: u32, chunk: &[u8], end: bool) -> Result<(), StreamFault> {
        self.inner.borrow_mut().conn.data(id, chunk, end).map_err(StreamFault::Protocol)
    }

    /// Queues DATA on stream `id` read straight from the Agent's socket
    /// into the connection's output by `read`, which must not wait
    /// ([`crate::h2::conn::Conn::data_read`]): the body's bytes are sealed
    /// where the read put them. The caller waited for room first
    /// ([`Self::send_room`]).
    pub fn read_data<E>(
        &self,
        id: u32,
        max: usize,
        left: usize,
        read: impl FnOnce(&mut Vec<u8>, &crate::io::Strided) -> Result<Option<usize>, E>,
    ) -> Result<Result<Option<usize>, E>, StreamFault> {
        self.inner.borrow_mut().conn.data_read(id, max, left, read).map_err(StreamFault::Protocol)
    }

    /// Writes what is queued on the connection, in the caller's task, if
    /// the socket takes it now; else, and for what it leaves, the
    /// connection's task is woken to write it. An exchange calls it before
    /// it waits: its frames go out without waiting for that task's turn.
    /// Only the connection's one stream writes so (the Agent's traffic:
    /// one payload at a time per connection); with others in flight, their
    /// frames are queued in the same turn and the connection's task writes
    /// them all at once (one write for three requests at 1 KiB, 64
    /// connections, where writing each at once cost 16 % more CPU).
    pub fn write_now(&self) {
        let alone = self.inner.borrow().conn.active() <= 1;
        if !(alone && (self.writer)(self)) {
            self.to_driver.notify();
        }
    }

    /// Waits until `f` gives a value, woken by what arrives for stream `id`.
    async fn wait_stream<T>(&self, id: u32, mut f: impl FnMut(&mut Inner) -> Option<T>) -> T {
        let mut waiter = self.changed.waiter();
        std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if let Some(v) = f(&mut i) {
                return Poll::Ready(v);
            }
            match i.slot(id) {
                Some(s) => s.waker = Some(cx.waker().clone()),
                None => waiter.register(cx.waker()),
            }
            Poll::Pending
        })
        .await
    }

    /// Waits for the stream's final answer head (interim ones skipped) and
    /// hands it to `read`, in place.
    pub async fn answer_head<T>(&self, id: u32, mut read: impl FnMut(&AnswerHead) -> T) -> Result<T, StreamFault> {
        self.wait_stream(id, |i| {
            let fault = i.fault(id);
            let s = i.slot(id)?;
            if let Some((status, _)) = s.head {
                if (100..200).contains(&status) {
                    s.head = None;
                    return None;
                }
                return Some(Ok(read(&s.answer)));
            }
            fault.map(Err)
        })
        .await
    }

    /// Waits for answer bytes of stream `id` and moves them into `out`.
    /// True when the stream ended with them.
    pub async fn answer_data(&self, id: u32, out: &mut Vec<u8>) -> Result<bool, StreamFault> {
        self.wait_stream(id, |i| {
            let fault = i.fault(id);
            let s = i.slot(id)?;
            if !s.data.is_empty() || s.ended {
                out.clear();
                out.extend_from_slice(&s.data);
                s.data.clear();
                return Some(Ok(s.ended));
            }
            fault.map(Err)
        })
        .await
    }

    /// Gives `n` answer bytes the Agent took back to the stream's flow control.
    pub fn release(&self, id: u32, n: usize) {
        self.inner.borrow_mut().conn.release(id, n);
        self.to_driver.notify();
    }

    /// The stream is done with: its slot goes; a stream still open is reset.
    pub fn finish(&self, id: u32) {
        let mut i = self.inner.borrow_mut();
        if let Some(k) = i.slots.iter().position(|s| s.id == id) {
            let mut slot = i.slots.swap_remove(k);
            if i.spare.len() < MAX_SPARE_SLOTS && slot.data.capacity() <= SPARE_SLOT_BYTES {
                slot.answer.clear();
                slot.data.clear();
                i.spare.push(slot);
            }
        }
        i.senders.retain(|(s, _)| *s != id);
        if i.dead.is_none() {
            i.conn.cancel(id);
        }
        drop(i);
        // Room for a stream that waits to open.
        self.changed.notify();
        self.to_driver.notify();
    }
}
