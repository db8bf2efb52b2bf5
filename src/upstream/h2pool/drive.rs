//! An HTTP/2 connection's task: it reads, and files what it read under
//! each stream's slot, waking who waits for it; it writes the frames it
//! queues itself (acknowledgements, PINGs, WINDOW_UPDATEs) and what the
//! exchanges could not write without waiting. It ends when the connection
//! fails, the intake closes it or stops answering PINGs, or it has had no
//! stream for `upstream.idle_timeout`.
//!
//! # Who writes
//! The TLS session is shared ([`Shared`]): an exchange writes the frames it
//! queued itself, in its own task, before it waits ([`write_now`]: sealed
//! and written if the socket takes them now), so a request does not wait
//! for this task's turn. This task waits for the intake's bytes with the
//! session borrowed only while the wait is polled, and takes the session
//! for its own writes, which may wait (a full socket): meanwhile the
//! exchanges leave their frames queued and wake it.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::bump;
use super::conn::{ConnEnd, H2Conn, Slot};
use crate::h2::conn::{Conn, Event};
use crate::h2::frame::{write_goaway, ErrorCode};
use crate::h2::out::Output;
use crate::io::Stream;
use crate::logging::summary::{self, About};
use crate::upstream::pool::PooledSession;
use crate::upstream::tls::WrittenNow;

/// A connection's TLS session, shared by its task and its exchanges;
/// `None` while the task writes (or once it ended).
pub type Shared<S> = Rc<RefCell<Option<PooledSession<S>>>>;

/// The line of a connection the intake's side ended abnormally: the first
/// after a quiet period in full, the rest counted (`logging::summary`).
const CUT: &str = "HTTP/2 connection to the intake cut";

/// Read and write buffer growth step: one TLS record's worth of plaintext.
const IO_BUF: usize = 16 * 1024;

/// A connection task's limits.
pub struct Timeouts {
    /// A write the intake takes no byte of for this long ends the connection.
    pub write: Duration,
    /// No stream for this long: the connection closes.
    pub idle: Duration,
    /// A PING not acknowledged within this ends the connection.
    pub ping: Duration,
}

/// The clock's part in a turn: when the connection became idle, and
/// whether it was busy last turn (the clock is read when a connection
/// becomes idle, not every turn).
struct Idle {
    since: Instant,
    was_busy: bool,
}

/// Runs the connection until it ends.
pub async fn drive<S: Stream>(conn: Rc<H2Conn>, shared: Shared<S>, limits: Timeouts) {
    let mut rbuf: Vec<u8> = Vec::with_capacity(4 * IO_BUF);
    let slots = match &*shared.borrow() {
        Some(s) => s.session.record_slots(),
        None => return,
    };
    let mut out = Output::new(slots, 4 * IO_BUF);
    let mut idle = Idle { since: Instant::now(), was_busy: false };
    let why = loop {
        if let Some(end) = write_queued(&conn, &shared, &mut out, limits.write).await {
            break Some(end);
        }
        if !out.is_empty() {
            out.clear();
            continue;
        }
        match before_read(&conn, &mut idle) {
            Turn::Dead => break None,
            Turn::End(end) => break Some(end),
            Turn::Again => continue,
            Turn::Read { busy } => {
                if rbuf.len() == rbuf.capacity() {
                    rbuf.reserve(IO_BUF);
                }
                match read_or_tick(&conn, &shared, &mut rbuf, &idle, busy, &limits).await {
                    Some(Ok(())) => file_input(&conn, &mut rbuf, busy),
                    Some(Err(end)) => break Some(end),
                    None => continue,
                }
            }
        }
    };
    // The socket closes now, not when the last exchange lets go.
    drop(shared.borrow_mut().take());
    match why {
        Some(why) => {
            tracing::debug!(addr = %conn.addr, why = %why, "HTTP/2 connection ended");
            conn.end(why);
        }
        // Ended already (its reason is the exchanges'); everyone looks again.
        None => conn.end(ConnEnd::Closed),
    }
}

/// Writes what is queued on `conn` now, in the caller's task, if the
/// socket takes it without waiting (what it takes only part of waits in
/// the session for the connection's task). True when nothing is left for
/// the connection's task to write.
pub(super) fn write_now<S: Stream>(conn: &H2Conn, shared: &RefCell<Option<PooledSession<S>>>) -> bool {
    // Taken (the task is writing) or gone: the task writes it.
    let Ok(mut guard) = shared.try_borrow_mut() else { return false };
    let Some(session) = guard.as_mut() else { return false };
    let mut i = conn.inner.borrow_mut();
    if i.dead.is_some() {
        return false;
    }
    let out = i.conn.output();
    if out.is_empty() {
        return !session.session.has_unwritten();
    }
    let frames = out.frames();
    match session.session.try_write_laid_out(out) {
        Ok(WrittenNow::NotNow) => false,
        Ok(done) => {
            out.clear();
            bump(&conn.counters.writes, 1);
            bump(&conn.counters.frames, frames);
            i.wake_senders();
            drop(i);
            conn.changed.notify();
            done == WrittenNow::All
        }
        Err(e) => {
            drop(i);
            drop(guard);
            conn.end(ConnEnd::Write(e));
            false
        }
    }
}

/// Writes what the exchanges queued, if anything (left in `out` until the
/// caller clears it), and what they left unwritten. `Some`: the write
/// failed and the connection ends.
async fn write_queued<S: Stream>(
    conn: &H2Conn,
    shared: &RefCell<Option<PooledSession<S>>>,
    out: &mut Output,
    limit: Duration,
) -> Option<ConnEnd> {
    std::mem::swap(conn.inner.borrow_mut().conn.output(), out);
    let mut session = shared.borrow_mut().take()?;
    if out.is_empty() && !session.session.has_unwritten() {
        *shared.borrow_mut() = Some(session);
        return None;
    }
    if !out.is_empty() {
        bump(&conn.counters.writes, 1);
        bump(&conn.counters.frames, out.frames());
    }
    // Sealed where the frames lie: no copy into the session's buffer. The
    // session is out of `shared` meanwhile: exchanges queue, and wake us.
    let write = if out.is_empty() {
        crate::rt::timeout(limit, session.session.flush()).await
    } else {
        crate::rt::timeout(limit, session.session.write_laid_out(out)).await
    };
    *shared.borrow_mut() = Some(session);
    conn.inner.borrow_mut().wake_senders();
    conn.changed.notify();
    match write {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(ConnEnd::Write(e)),
        Err(_) => Some(ConnEnd::WriteStalled(limit)),
    }
}

enum Turn {
    /// The connection ended already (and what was queued is written).
    Dead,
    End(ConnEnd),
    /// Something was queued (a GOAWAY): write it first.
    Again,
    Read {
        busy: bool,
    },
}

/// What the connection does before it waits to read: end (dead, or done
/// after a GOAWAY), close a retired idle one, or read.
fn before_read(conn: &H2Conn, idle: &mut Idle) -> Turn {
    let mut i = conn.inner.borrow_mut();
    if i.dead.is_some() {
        return Turn::Dead;
    }
    let busy = !i.slots.is_empty();
    if !busy && i.conn.going_away() {
        return Turn::End(ConnEnd::GoAway);
    }
    if !busy && i.retired {
        write_goaway(i.conn.output(), 0, ErrorCode::NoError);
        i.dead = Some(Rc::new(ConnEnd::Retired));
        return Turn::Again;
    }
    if busy {
        idle.was_busy = true;
    } else if idle.was_busy {
        idle.was_busy = false;
        idle.since = Instant::now();
        i.last_read = idle.since;
    }
    Turn::Read { busy }
}

/// Waits for input, a wake-up from an exchange, or the clock. `Some(Ok)`:
/// input to file; `None`: go round again; `Some(Err)`: the connection ends.
async fn read_or_tick<S: Stream>(
    conn: &H2Conn,
    shared: &RefCell<Option<PooledSession<S>>>,
    rbuf: &mut Vec<u8>,
    idle: &Idle,
    busy: bool,
    limits: &Timeouts,
) -> Option<Result<(), ConnEnd>> {
    // What the clock may do next: end a PING's wait, PING a connection
    // silent for half the idle timeout, or close an idle one.
    let (last_read, ping_sent) = {
        let i = conn.inner.borrow();
        (i.last_read, i.ping_sent)
    };
    let timer = match ping_sent {
        Some(sent) => Some(sent + limits.ping),
        None if !busy => Some((idle.since + limits.idle).min(last_read + conn.stale_after)),
        None => None,
    };
    tokio::select! {
        biased;
        _ = conn.to_driver.notified() => None,
        // Borrowed only while polled: exchanges write between the polls.
        r = std::future::poll_fn(|cx| match shared.try_borrow_mut().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(s) => s.session.poll_read_plain_ready(cx, rbuf),
            // Never: only this task takes the session, and exchanges borrow it without waiting.
            None => Poll::Ready(Err(io::Error::other("the TLS session is in use"))),
        }) => match r {
            Ok(0) => Some(Err(ConnEnd::Closed)),
            Err(e) => Some(Err(ConnEnd::Read(e))),
            Ok(_) => Some(Ok(())),
        },
        _ = crate::rt::sleep_until(timer.unwrap_or(idle.since)), if timer.is_some() => {
            tick(conn, ping_sent.is_some(), idle.since + limits.idle, limits.ping)
        }
    }
}

/// The clock struck: a PING unanswered ends the connection, an idle one
/// closes, a silent one is PINGed.
fn tick(conn: &H2Conn, ping_out: bool, idle_until: Instant, ping_limit: Duration) -> Option<Result<(), ConnEnd>> {
    if ping_out {
        let end = ConnEnd::PingUnanswered(ping_limit);
        let event = summary::Event { what: CUT, product: "-", about: About::Upstream(&conn.host), cause: "ping" };
        crate::count_or_log!(warn, conn.log, event, || format!("{}: {end}", conn.addr), upstream = &*conn.host, addr = %conn.addr, "{CUT}: {end}");
        return Some(Err(end));
    }
    let mut i = conn.inner.borrow_mut();
    if Instant::now() >= idle_until {
        write_goaway(i.conn.output(), 0, ErrorCode::NoError);
        i.dead = Some(Rc::new(ConnEnd::Idle));
    } else {
        i.ping(&conn.counters);
        drop(i);
        conn.stats.set();
    }
    None
}

/// Files what was read under each stream and wakes who waits for it.
fn file_input(conn: &H2Conn, rbuf: &mut Vec<u8>, busy: bool) {
    let mut i = conn.inner.borrow_mut();
    if !busy {
        i.last_read = Instant::now();
    }
    let inner = &mut *i;
    let mut filing = Filing {
        slots: &mut inner.slots,
        senders: &mut inner.senders,
        ping_sent: &mut inner.ping_sent,
        changed: false,
    };
    let res = inner.conn.receive(rbuf, |c, ev| filing.file(c, rbuf, ev));
    let changed = filing.changed;
    match res {
        Ok(used) => {
            rbuf.drain(..used);
            i.wake_senders();
            drop(i);
            if changed {
                conn.changed.notify();
            }
        }
        Err(e) => {
            let event =
                summary::Event { what: CUT, product: "-", about: About::Upstream(&conn.host), cause: "protocol" };
            crate::count_or_log!(warn, conn.log, event, || format!("{}: {e}", conn.addr), upstream = &*conn.host, addr = %conn.addr, error = %e, "{CUT}");
            drop(i);
            // The GOAWAY is queued: the loop writes it, then ends.
            conn.end(ConnEnd::Protocol(e));
        }
    }
}

/// Where the events of one read go.
struct Filing<'a> {
    slots: &'a mut [Slot],
    senders: &'a mut Vec<(u32, Waker)>,
    ping_sent: &'a mut Option<Instant>,
    /// Something the connection's waiters look at changed.
    changed: bool,
}

impl Filing<'_> {
    fn slot(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    fn wake_every_sender(&mut self) {
        for (_, w) in self.senders.drain(..) {
            w.wake();
        }
    }

    /// Files one event under its stream's slot and wakes who waits for it.
    fn file(&mut self, c: &Conn, input: &[u8], ev: Event) {
        match ev {
            Event::Head { stream, status, end_stream } => {
                if let Some(s) = self.slot(stream) {
                    s.answer.copy_from(c.answer_head());
                    s.head = Some((status, end_stream));
                    s.ended |= end_stream;
                    s.wake();
                }
            }
            Event::Data { stream, range, end_stream } => {
                if let Some(s) = self.slot(stream) {
                    s.data.extend_from_slice(&input[range]);
                    s.ended |= end_stream;
                    s.wake();
                }
            }
            Event::Reset { stream, code } => {
                if let Some(s) = self.slot(stream) {
                    s.reset = Some(code);
                    s.wake();
                }
                // A reset stream may have been waiting for window room.
                self.wake_every_sender();
                self.changed = true;
            }
            Event::GoAway { last_stream, .. } => {
                for s in self.slots.iter_mut().filter(|s| s.id > last_stream && !s.ended) {
                    s.reset = Some(ErrorCode::RefusedStream);
                    s.wake();
                }
                self.wake_every_sender();
                self.changed = true;
            }
            Event::WindowOpen => self.changed = true,
            Event::PingAck(_) => {
                // Alive: exchanges that waited for it open their streams.
                *self.ping_sent = None;
                self.changed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::conn::LocalSettings;

    fn slots(ids: &[u32]) -> Vec<Slot> {
        ids.iter().map(|&id| Slot { id, ..Slot::default() }).collect()
    }

    fn file(slots: &mut [Slot], ping_sent: &mut Option<Instant>, ev: Event) -> bool {
        let conn = Conn::new(LocalSettings::default());
        let mut senders = Vec::new();
        let mut filing = Filing { slots, senders: &mut senders, ping_sent, changed: false };
        filing.file(&conn, &[], ev);
        filing.changed
    }

    #[test]
    fn goaway_refuses_only_the_streams_above_its_last_stream_id() {
        let mut s = slots(&[1, 3, 5, 7]);
        s[3].ended = true;
        let changed = file(&mut s, &mut None, Event::GoAway { last_stream: 3, code: ErrorCode::NoError });
        let reset: Vec<_> = s.iter().map(|s| (s.id, s.reset)).collect();
        // 5 was never processed: refused (sent again); 7 had its whole
        // answer already; 1 and 3 go on.
        assert_eq!(reset, vec![(1, None), (3, None), (5, Some(ErrorCode::RefusedStream)), (7, None)]);
        assert!(changed, "exchanges waiting on the connection look again");
    }

    #[test]
    fn a_ping_ack_ends_the_wait_for_it() {
        let mut s = slots(&[1]);
        let mut ping = Some(Instant::now());
        assert!(file(&mut s, &mut ping, Event::PingAck(*b"fipsrly!")));
        assert_eq!(ping, None);
    }

    #[test]
    fn frames_are_counted_by_their_headers_in_a_laid_out_output() {
        use crate::h2::out::{Output, Put, Slots};
        let mut out = Output::new(Slots { before: 5, after: 17, payload: 16 * 1024 }, 0);
        out.put(crate::h2::frame::PREFACE);
        crate::h2::frame::write_ping(&mut out, false, [0; 8]);
        crate::h2::frame::data_head(&mut out, 1, 3, true);
        out.put(b"abc");
        crate::h2::frame::write_rst_stream(&mut out, 1, ErrorCode::Cancel);
        assert_eq!(out.frames(), 3, "the preface is not a frame");
        out.clear();
        assert_eq!(out.frames(), 0);
    }
}
