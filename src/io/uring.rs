//! The io_uring backend: every socket operation of a worker is an entry on
//! the worker's own ring ([`super::ring`]), driven by hand: one
//! `io_uring_enter` per loop turn submits and reaps everything. Reads and
//! writes hand their owned buffer to the kernel for the duration of the
//! operation and get it back with the result.
//!
//! Sockets are in blocking mode: io_uring waits on them inside the kernel,
//! and the non-blocking reads (`recv_now`) pass `MSG_DONTWAIT`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::Poll;

use io_uring::{opcode, squeue, types};

use super::ring;
use super::{Backend, Listener, Stream, Strided};

#[derive(Debug, Clone, Copy)]
pub struct Uring;

pub struct UringStream {
    /// A read left in flight while the stream is idle ([`Stream::arm`]),
    /// with the length its buffer had when armed.
    armed: Option<(ring::Op<Vec<u8>>, usize)>,
    /// How ring operations name the socket: its slot in the ring's file
    /// table, or its descriptor.
    target: Target,
    /// The iovecs of a vectored read, kept between reads.
    iov: Option<Box<[libc::iovec; super::MAX_PLACES]>>,
    fd: OwnedFd,
}

/// The socket as an operation names it.
#[derive(Clone, Copy)]
struct Target {
    /// A slot of the ring's file table, or the descriptor.
    n: RawFd,
    fixed: bool,
}

impl Target {
    /// Stamps `entry` (built with `types::Fd(self.n)`) as using a
    /// registered file when it does.
    fn stamp(self, entry: squeue::Entry) -> squeue::Entry {
        if self.fixed {
            entry.flags(squeue::Flags::FIXED_FILE)
        } else {
            entry
        }
    }
}

impl UringStream {
    fn new(fd: OwnedFd) -> Self {
        let target = match ring::register_file(fd.as_raw_fd()) {
            Some(slot) => Target { n: slot as RawFd, fixed: true },
            None => Target { n: fd.as_raw_fd(), fixed: false },
        };
        UringStream { armed: None, target, iov: None, fd }
    }

    /// Waits for the armed read, if any, and returns its result and buffer.
    /// Cancel-safe: dropped, the read stays armed.
    async fn take_armed(&mut self) -> Option<(io::Result<usize>, Vec<u8>)> {
        let (op, _) = self.armed.as_mut()?;
        let (res, _, buf) = op.await;
        let (_, len) = self.armed.take().expect("armed above");
        Some(finish_read(res, buf, len))
    }

    /// The armed read's result, if it is done; never waits.
    fn poll_armed(&mut self) -> Option<(io::Result<usize>, Vec<u8>)> {
        let (op, _) = self.armed.as_mut()?;
        let std::task::Poll::Ready((res, _, buf)) =
            std::pin::Pin::new(op).poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            return None;
        };
        let (_, len) = self.armed.take().expect("armed above");
        Some(finish_read(res, buf, len))
    }
}

/// A receive's buffer with the bytes the kernel wrote after `len` counted.
fn finish_read(res: i32, mut buf: Vec<u8>, len: usize) -> (io::Result<usize>, Vec<u8>) {
    if res < 0 {
        return (Err(os_err(res)), buf);
    }
    // SAFETY: the kernel wrote `res` bytes after `len`.
    unsafe { buf.set_len(len + res as usize) };
    (Ok(res as usize), buf)
}

/// Puts the armed read's buffer where the caller's placeholder was. The
/// placeholder is empty by contract; bytes in it (a caller that broke the
/// contract) are kept after the armed ones rather than lost.
fn restore(buf: &mut Vec<u8>, mut got: Vec<u8>) {
    let placeholder = std::mem::take(buf);
    debug_assert!(placeholder.is_empty(), "a buffer was filled while the stream held the armed one");
    got.extend_from_slice(&placeholder);
    *buf = got;
}

impl Drop for UringStream {
    /// The armed read is cancelled (submitted at once) before the slot is
    /// emptied; the socket closes when the slot no longer holds it.
    fn drop(&mut self) {
        drop(self.armed.take());
        if self.target.fixed {
            ring::unregister_file(self.target.n as u32);
        }
    }
}

/// Submits a receive into the spare capacity of `buf`.
fn recv(to: Target, buf: Vec<u8>) -> (ring::Op<Vec<u8>>, usize) {
    recv_max(to, buf, u32::MAX as usize)
}

/// Submits a receive of at most `max` bytes into the spare capacity of `buf`.
fn recv_max(to: Target, mut buf: Vec<u8>, max: usize) -> (ring::Op<Vec<u8>>, usize) {
    let len = buf.len();
    let room = (buf.capacity() - len).min(max).min(u32::MAX as usize) as u32;
    // SAFETY: the pointer is into the spare capacity of `buf`, whose heap
    // block moves with it into the operation and stays alive until the
    // kernel answers.
    let ptr = unsafe { buf.as_mut_ptr().add(len) };
    let entry = to.stamp(opcode::Recv::new(types::Fd(to.n), ptr, room).build());
    (ring::submit(entry, buf), len)
}

/// Accepts after a one-shot poll on the ring and `accept4`, not an
/// io_uring accept: when the accept loop stops (drain, restart in place),
/// no accept stays in flight to take a connection nobody serves.
pub struct UringListener(std::net::TcpListener);

fn os_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// Waits on the ring until `fd` has `events` (a one-shot poll; a dropped
/// wait is cancelled and consumes nothing). For the listener.
async fn poll(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    let entry = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
    let (res, _, ()) = ring::submit(entry, ()).await;
    if res < 0 {
        return Err(os_err(res));
    }
    Ok(())
}

impl Stream for UringStream {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if let Some((res, got)) = self.take_armed().await {
            let mut buf = buf;
            restore(&mut buf, got);
            return (res, buf);
        }
        self.read_max(buf, usize::MAX).await
    }

    async fn read_max(&mut self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        if self.armed.is_some() {
            // Not reached by the relay (bounded reads are body reads, never
            // on an armed stream): collect the armed read rather than have
            // two in flight, and refuse a buffer that holds bytes.
            if !buf.is_empty() {
                return (Err(io::Error::other("bounded read into a filled buffer while a read is armed")), buf);
            }
            let (res, got) = self.take_armed().await.expect("armed above");
            return (res, got);
        }
        if buf.capacity() == buf.len() || max == 0 {
            return (Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read")), buf);
        }
        let mut buf = buf;
        loop {
            let (op, len) = recv_max(self.target, buf, max);
            let (res, _, b) = op.await;
            if res == -libc::EINTR {
                buf = b;
                continue;
            }
            return finish_read(res, b, len);
        }
    }

    async fn read_strided(&mut self, mut buf: Vec<u8>, reads: Strided) -> (io::Result<usize>, Vec<u8>) {
        if self.armed.is_some() {
            // Not reached by the relay (vectored reads are body reads, never
            // on an armed stream).
            return (Err(io::Error::other("vectored read while a read is armed")), buf);
        }
        loop {
            // The iovecs live in a box the stream keeps (lent to the
            // operation, back with its result): no allocation per read.
            let mut iov = self.iov.take().unwrap_or_else(|| Box::new(super::no_iovecs()));
            let count = reads.iovecs(&mut buf, &mut iov);
            if count == 0 {
                self.iov = Some(iov);
                return (Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read")), buf);
            }
            // SAFETY: the iovecs, in their box, and the spare capacity of
            // `buf` they point into move with the operation and stay alive
            // (their heap blocks unmoved) until the kernel answers.
            let entry =
                self.target.stamp(opcode::Readv::new(types::Fd(self.target.n), iov.as_ptr(), count as u32).build());
            let (res, _, (b, iov)) = ring::submit(entry, (buf, iov)).await;
            self.iov = Some(iov);
            buf = b;
            match res {
                r if r == -libc::EINTR => continue,
                r if r < 0 => return (Err(os_err(r)), buf),
                r => return (Ok(r as usize), buf),
            }
        }
    }

    async fn write_all(&mut self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut off = 0;
        while off < buf.len() {
            let left = (buf.len() - off).min(u32::MAX as usize) as u32;
            // SAFETY: as in `read`; the bytes stay where they are until answered.
            let ptr = unsafe { buf.as_ptr().add(off) };
            let entry = self
                .target
                .stamp(opcode::Send::new(types::Fd(self.target.n), ptr, left).flags(libc::MSG_NOSIGNAL).build());
            let (res, _, b) = ring::submit(entry, buf).await;
            buf = b;
            match res {
                r if r == -libc::EINTR => continue,
                r if r < 0 => return (Err(os_err(r)), buf),
                0 => return (Err(io::ErrorKind::WriteZero.into()), buf),
                r => off += r as usize,
            }
        }
        (Ok(()), buf)
    }

    fn poll_read_ready(&mut self, cx: &mut std::task::Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        // The read is armed with the caller's buffer and stays armed if
        // this wait is abandoned: no poll and no extra recv per wait.
        loop {
            if self.armed.is_none() {
                if buf.capacity() == buf.len() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read")));
                }
                self.arm(buf);
            }
            let (op, _) = self.armed.as_mut().expect("armed above");
            let (res, _, got) = std::task::ready!(std::pin::Pin::new(op).poll(cx));
            let (_, len) = self.armed.take().expect("armed above");
            let (res, got) = finish_read(res, got, len);
            restore(buf, got);
            match res {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// A plain `send` beside the ring (as `try_read_now`'s `recv`): the
    /// ring has no entry that answers without waiting.
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        super::send_now(self.fd.as_raw_fd(), buf)
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        if self.armed.is_some() {
            return match self.poll_armed() {
                None => Ok(None),
                Some((res, got)) => {
                    restore(buf, got);
                    res.map(Some)
                }
            };
        }
        super::recv_now(self.fd.as_raw_fd(), buf)
    }

    fn arm(&mut self, buf: &mut Vec<u8>) {
        if self.armed.is_some() || buf.capacity() == buf.len() {
            return;
        }
        self.armed = Some(recv(self.target, std::mem::take(buf)));
    }

    fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    async fn disarm(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let Some((op, _)) = &self.armed else { return Ok(None) };
        op.cancel();
        let (res, got) = self.take_armed().await.expect("armed above");
        restore(buf, got);
        match res {
            Ok(n) => Ok(Some(n)),
            // Cancelled before it read anything (EINTR: cancelled while a
            // kernel worker thread was in the receive).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A plain `readv` beside the ring, as `try_read_now`'s `recv`.
    fn try_read_strided_now(&mut self, buf: &mut Vec<u8>, reads: &Strided) -> io::Result<Option<usize>> {
        if self.armed.is_some() {
            return Ok(None);
        }
        super::readv_now(self.fd.as_raw_fd(), buf, reads)
    }

    /// One poll entry on the ring.
    async fn readable(&mut self) -> io::Result<bool> {
        if self.armed.is_some() {
            return Ok(false);
        }
        poll(self.fd.as_raw_fd(), libc::POLLIN).await.map(|()| true)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write)
    }

    fn set_nodelay(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(true)
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Listener for UringListener {
    type Stream = UringStream;
    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        loop {
            match self.0.accept() {
                // accept4 does not pass O_NONBLOCK on: the socket is blocking.
                Ok((s, peer)) => return Ok((UringStream::new(s.into()), peer)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => poll(self.0.as_raw_fd(), libc::POLLIN).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Backend for Uring {
    type Stream = UringStream;
    type Listener = UringListener;
    const NAME: &'static str = "io_uring";

    fn listener(l: std::net::TcpListener) -> io::Result<UringListener> {
        l.set_nonblocking(true)?;
        Ok(UringListener(l))
    }

    fn stream(s: std::net::TcpStream) -> io::Result<UringStream> {
        // Handed over by an epoll process, the socket may be O_NONBLOCK (a
        // flag of the shared file description); io_uring reads of an
        // O_NONBLOCK file may return EAGAIN instead of waiting. Clear it.
        s.set_nonblocking(false)?;
        Ok(UringStream::new(s.into()))
    }

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        let sa = Box::new(socket2::SockAddr::from(addr));
        let entry = opcode::Connect::new(types::Fd(sock.as_raw_fd()), sa.as_ptr(), sa.len()).build();
        let (res, _, _sa) = ring::submit(entry, sa).await;
        if res < 0 {
            return Err(os_err(res));
        }
        Ok(UringStream::new(sock.into()))
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        super::probe_uring().map_err(io::Error::other)?;
        ring::block_on(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// A connected pair: the ring's side and a plain std peer.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        (ours, peer)
    }

    async fn settle() {
        crate::rt::sleep(Duration::from_millis(20)).await;
    }

    #[test]
    fn a_disarmed_read_gives_back_what_it_took_and_takes_nothing_after() {
        ring::block_on(async {
            let (ours, mut peer) = pair();
            let mut s = Uring::stream(ours).unwrap();
            // Armed, then bytes arrive: disarm hands them back.
            let mut buf = Vec::with_capacity(64);
            s.arm(&mut buf);
            assert!(s.is_armed() && buf.capacity() == 0);
            peer.write_all(b"first").unwrap();
            settle().await;
            assert_eq!(s.disarm(&mut buf).await.unwrap(), Some(5));
            assert_eq!(&buf[..], b"first");
            // Armed, nothing arrives: disarm reports nothing, and bytes sent
            // afterwards are still in the socket for whoever reads next.
            buf.clear();
            s.arm(&mut buf);
            assert_eq!(s.disarm(&mut buf).await.unwrap(), None);
            assert_eq!(buf.capacity(), 64);
            peer.write_all(b"later").unwrap();
            settle().await;
            let mut plain = Vec::with_capacity(64);
            assert_eq!(super::super::recv_now(s.raw_fd(), &mut plain).unwrap(), Some(5));
            assert_eq!(&plain[..], b"later");
        })
        .unwrap();
    }

    #[test]
    fn an_abandoned_wait_keeps_its_read_and_loses_no_byte() {
        ring::block_on(async {
            let (ours, mut peer) = pair();
            let mut s = Uring::stream(ours).unwrap();
            let mut buf = Vec::with_capacity(64);
            let t0 = Instant::now();
            assert!(crate::rt::timeout(Duration::from_millis(10), s.read_ready(&mut buf)).await.is_err());
            assert!(t0.elapsed() >= Duration::from_millis(10));
            assert!(s.is_armed(), "the abandoned wait left its read armed");
            // Nothing came yet: a liveness check says so without a syscall.
            assert_eq!(s.try_read_now(&mut buf).unwrap(), None);
            peer.write_all(b"request").unwrap();
            settle().await;
            assert_eq!(s.try_read_now(&mut buf).unwrap(), Some(7));
            assert_eq!(&buf[..], b"request");
            // A plain read after a wait that was abandoned gets the bytes too.
            buf.clear();
            assert!(crate::rt::timeout(Duration::from_millis(5), s.read_ready(&mut buf)).await.is_err());
            peer.write_all(b"next").unwrap();
            let (res, got) = s.read(Vec::new()).await;
            assert_eq!(res.unwrap(), 4);
            assert_eq!(&got[..], b"next");
            // The peer closes: an armed read sees the end of stream.
            let mut buf = Vec::with_capacity(64);
            s.arm(&mut buf);
            drop(peer);
            settle().await;
            assert_eq!(s.try_read_now(&mut buf).unwrap(), Some(0));
        })
        .unwrap();
    }

    #[test]
    fn sockets_are_registered_files_and_close_when_dropped() {
        ring::block_on(async {
            let (ours, mut peer) = pair();
            let mut s = Uring::stream(ours).unwrap();
            assert!(s.target.fixed, "the ring has a file table on this kernel");
            let slot = s.target.n;
            // I/O by slot works both ways.
            peer.write_all(b"ping").unwrap();
            let (res, got) = s.read(Vec::with_capacity(16)).await;
            assert_eq!((res.unwrap(), &got[..]), (4, &b"ping"[..]));
            let (res, _) = s.write_all(b"pong".to_vec()).await;
            res.unwrap();
            let mut b = [0u8; 4];
            peer.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"pong");
            // Dropped with a read armed: the table lets go of the socket,
            // so it closes (the peer reads EOF), and the slot is reused.
            let mut buf = Vec::with_capacity(16);
            s.arm(&mut buf);
            drop(s);
            // The cancelled read lets go of the file when its completion is
            // reaped, on the loop's next turn (DEFER_TASKRUN).
            settle().await;
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(peer.read(&mut b).unwrap(), 0, "the socket closed with the stream");
            let (again, _peer2) = pair();
            let s2 = Uring::stream(again).unwrap();
            assert_eq!(s2.target.n, slot, "the emptied slot is used again");
        })
        .unwrap();
    }

    #[test]
    fn reads_writes_and_connect_go_through_the_ring() {
        ring::block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let echo = std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                let mut b = vec![0u8; 256 * 1024];
                c.read_exact(&mut b).unwrap();
                c.write_all(&b).unwrap();
            });
            let mut s = Uring::connect(addr).await.unwrap();
            let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
            let (res, _) = s.write_all(data.clone()).await;
            res.unwrap();
            let mut got = Vec::with_capacity(data.len());
            while got.len() < data.len() {
                let (res, b) = s.read(got).await;
                got = b;
                assert!(res.unwrap() > 0);
            }
            assert!(got == data);
            echo.join().unwrap();
        })
        .unwrap();
    }

    #[test]
    fn a_strided_read_fills_its_places_in_order_and_no_more_than_total() {
        ring::block_on(async {
            let (ours, mut peer) = pair();
            let mut s = Uring::stream(ours).unwrap();
            let data: Vec<u8> = (0..100u8).collect();
            peer.write_all(&data).unwrap();
            settle().await;
            // Places of 30 bytes every 40, 70 bytes in all: 30 + 30 + 10.
            let reads = Strided::even(30, 40, 70);
            let mut buf = Vec::with_capacity(2 + reads.room());
            buf.extend_from_slice(b"hd");
            let (res, mut buf) = s.read_strided(buf, reads).await;
            assert_eq!(res.unwrap(), 70);
            assert_eq!(buf.len(), 2, "the length is the caller's to set");
            // SAFETY: the read wrote the places; the gaps are checked only
            // where they were written.
            unsafe { buf.set_len(2 + 90) };
            assert_eq!(&buf[2..32], &data[..30]);
            assert_eq!(&buf[42..72], &data[30..60]);
            assert_eq!(&buf[82..92], &data[60..70]);
            // The rest stays in the socket for the next read.
            let mut rest = Vec::with_capacity(64);
            let (res, rest_buf) = s.read(rest).await;
            rest = rest_buf;
            assert_eq!(res.unwrap(), 30);
            assert_eq!(&rest[..], &data[70..]);
        })
        .unwrap();
    }
}
