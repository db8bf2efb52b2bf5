//! An in-memory I/O backend, for unit tests of what sits above the seam
//! (the pool, TLS sessions, the Agent side's framing) without sockets or a
//! process. A stream is a pair of bounded in-memory pipes; a listener is an
//! address in a table of this thread; the loop is tokio's current-thread
//! runtime, so [`crate::rt`]'s timers work.
//!
//! Semantics follow TCP where the relay depends on them: a write waits while
//! the peer's pipe is full (backpressure), a read returns what is there (at
//! most the spare capacity), `Ok(0)` after the peer shut its write side or
//! went away, and a write to a peer that went away fails with `BrokenPipe`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::{Backend, Listener, Stream};

/// Bytes a pipe holds before its writer waits.
pub const PIPE_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Mem;

#[derive(Default)]
struct Pipe {
    buf: RefCell<VecDeque<u8>>,
    /// The writer shut down or went away: the reader sees EOF once drained.
    write_closed: Cell<bool>,
    /// The reader went away: writes fail.
    read_closed: Cell<bool>,
    reader: RefCell<Option<Waker>>,
    writer: RefCell<Option<Waker>>,
}

impl Pipe {
    fn wake_reader(&self) {
        if let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Moves up to `max` bytes into the spare capacity of `out`:
    /// `Some(0)` at EOF, `None` when nothing is there yet.
    fn take(&self, out: &mut Vec<u8>, max: usize) -> Option<usize> {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return self.write_closed.get().then_some(0);
        }
        let n = buf.len().min(out.capacity() - out.len()).min(max);
        out.extend(buf.drain(..n));
        drop(buf);
        self.wake_writer();
        Some(n)
    }
}

/// One end of an in-memory connection.
pub struct MemStream {
    rx: Rc<Pipe>,
    tx: Rc<Pipe>,
}

/// Two connected ends.
pub fn pair() -> (MemStream, MemStream) {
    let (a, b) = (Rc::new(Pipe::default()), Rc::new(Pipe::default()));
    (MemStream { rx: a.clone(), tx: b.clone() }, MemStream { rx: b, tx: a })
}

impl MemStream {
    async fn read_up_to(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        if buf.capacity() == buf.len() || max == 0 {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
        }
        poll_fn(|cx| match self.rx.take(buf, max) {
            Some(n) => Poll::Ready(Ok(n)),
            None => {
                *self.rx.reader.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Bytes written to this end and not read by the peer yet.
    pub fn unread(&self) -> usize {
        self.tx.buf.borrow().len()
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        self.tx.write_closed.set(true);
        self.tx.wake_reader();
        self.rx.read_closed.set(true);
        self.rx.wake_writer();
    }
}

impl Stream for MemStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let res = self.read_up_to(&mut buf, usize::MAX).await;
        (res, buf)
    }

    async fn read_max(&mut self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        let res = self.read_up_to(&mut buf, max).await;
        (res, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut off = 0;
        let res = poll_fn(|cx| loop {
            if off == buf.len() {
                return Poll::Ready(Ok(()));
            }
            if self.tx.read_closed.get() || self.tx.write_closed.get() {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            let room = PIPE_CAPACITY.saturating_sub(self.tx.buf.borrow().len());
            if room == 0 {
                *self.tx.writer.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(buf.len() - off);
            self.tx.buf.borrow_mut().extend(&buf[off..off + n]);
            off += n;
            self.tx.wake_reader();
        })
        .await;
        (res, buf)
    }

    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        // Bytes move only inside the poll that returns them: cancel-safe.
        if buf.capacity() == buf.len() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read")));
        }
        match self.rx.take(buf, usize::MAX) {
            Some(n) => Poll::Ready(Ok(n)),
            None => {
                *self.rx.reader.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        if self.tx.read_closed.get() || self.tx.write_closed.get() {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let n = PIPE_CAPACITY.saturating_sub(self.tx.buf.borrow().len()).min(buf.len());
        if n == 0 {
            return Ok(None);
        }
        self.tx.buf.borrow_mut().extend(&buf[..n]);
        self.tx.wake_reader();
        Ok(Some(n))
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        if buf.capacity() == buf.len() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
        }
        Ok(self.rx.take(buf, usize::MAX))
    }

    fn try_read_strided_now(&mut self, buf: &mut Vec<u8>, reads: &super::Strided) -> io::Result<Option<usize>> {
        assert!(buf.capacity() - buf.len() >= reads.room(), "strided read past the buffer");
        let mut q = self.rx.buf.borrow_mut();
        if q.is_empty() {
            return Ok(self.rx.write_closed.get().then_some(0));
        }
        let base = buf.len();
        let mut n = 0;
        for (at, len) in reads.places() {
            let take = len.min(q.len());
            for (k, b) in q.drain(..take).enumerate() {
                buf.spare_capacity_mut()[at + k].write(b);
            }
            n += take;
            if take < len {
                break;
            }
        }
        debug_assert_eq!(buf.len(), base);
        drop(q);
        self.rx.wake_writer();
        Ok(Some(n))
    }

    async fn readable(&mut self) -> io::Result<bool> {
        poll_fn(|cx| {
            if !self.rx.buf.borrow().is_empty() || self.rx.write_closed.get() {
                return Poll::Ready(Ok(true));
            }
            *self.rx.reader.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.tx.write_closed.set(true);
        self.tx.wake_reader();
        Ok(())
    }

    fn set_nodelay(&self) -> io::Result<()> {
        Ok(())
    }

    /// No descriptor: -1 (a hand-over of a memory stream fails cleanly).
    fn raw_fd(&self) -> RawFd {
        -1
    }
}

#[derive(Default)]
struct Backlog {
    queue: RefCell<VecDeque<(MemStream, SocketAddr)>>,
    acceptor: RefCell<Option<Waker>>,
}

thread_local! {
    static LISTENERS: RefCell<HashMap<SocketAddr, Rc<Backlog>>> = RefCell::new(HashMap::new());
    static NEXT_PORT: Cell<u16> = const { Cell::new(40_000) };
}

/// A listening address of this thread's in-memory network.
pub struct MemListener {
    addr: SocketAddr,
    backlog: Rc<Backlog>,
}

impl Mem {
    /// Listens on `addr` (replacing an earlier listener there).
    pub fn listen(addr: SocketAddr) -> MemListener {
        let backlog = Rc::new(Backlog::default());
        LISTENERS.with(|l| l.borrow_mut().insert(addr, backlog.clone()));
        MemListener { addr, backlog }
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        LISTENERS.with(|l| l.borrow_mut().remove(&self.addr));
    }
}

impl Listener for MemListener {
    type Stream = MemStream;
    async fn accept(&self) -> io::Result<(MemStream, SocketAddr)> {
        poll_fn(|cx| match self.backlog.queue.borrow_mut().pop_front() {
            Some(c) => Poll::Ready(Ok(c)),
            None => {
                *self.backlog.acceptor.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Backend for Mem {
    type Stream = MemStream;
    type Listener = MemListener;
    const NAME: &'static str = "memory";

    fn listener(_: std::net::TcpListener) -> io::Result<MemListener> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the memory backend has no sockets: use Mem::listen"))
    }

    fn stream(_: std::net::TcpStream) -> io::Result<MemStream> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the memory backend has no sockets"))
    }

    async fn connect(addr: SocketAddr) -> io::Result<MemStream> {
        let backlog = LISTENERS.with(|l| l.borrow().get(&addr).cloned());
        let Some(backlog) = backlog else { return Err(io::ErrorKind::ConnectionRefused.into()) };
        let port = NEXT_PORT.with(|p| {
            let v = p.get();
            p.set(v.wrapping_add(1).max(40_000));
            v
        });
        let (ours, theirs) = pair();
        backlog.queue.borrow_mut().push_back((theirs, SocketAddr::from(([127, 0, 0, 1], port))));
        if let Some(w) = backlog.acceptor.borrow_mut().take() {
            w.wake();
        }
        Ok(ours)
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        super::epoll::Epoll::block_on(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_carry_bytes_apply_backpressure_and_report_eof() {
        Mem::block_on(async {
            let listener = Mem::listen("127.0.0.1:1".parse().unwrap());
            assert!(Mem::connect("127.0.0.1:2".parse().unwrap()).await.is_err(), "nobody listens there");
            let mut client = Mem::connect("127.0.0.1:1".parse().unwrap()).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            // A write larger than the pipe waits until the peer reads.
            let big: Vec<u8> = (0..3 * PIPE_CAPACITY).map(|i| i as u8).collect();
            let writer = crate::rt::timeout(std::time::Duration::from_millis(50), client.write_all(big.clone()));
            assert!(writer.await.is_err(), "the write waits for the reader");
            let mut got = Vec::with_capacity(big.len());
            let copy = big.clone();
            let reader = async move {
                while got.len() < copy.len() {
                    let (res, b) = server.read(got).await;
                    got = b;
                    assert!(res.unwrap() > 0);
                }
                (got, server)
            };
            let (wrote, (got, mut server)) = tokio::join!(client.write_all(big[PIPE_CAPACITY..].to_vec()), reader);
            wrote.0.unwrap();
            assert!(got == big, "every byte, in order");
            // Shut down: EOF after what is buffered; dropped: writes fail.
            client.write_all(b"tail".to_vec()).await.0.unwrap();
            client.shutdown_write().unwrap();
            let mut buf = Vec::with_capacity(2);
            assert_eq!(server.read_ready(&mut buf).await.unwrap(), 2);
            buf.clear();
            assert_eq!(server.try_read_now(&mut buf).unwrap(), Some(2));
            buf.clear();
            assert_eq!(server.try_read_now(&mut buf).unwrap(), Some(0));
            drop(client);
            assert_eq!(server.write_all(b"x".to_vec()).await.0.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        })
        .unwrap();
    }
}
