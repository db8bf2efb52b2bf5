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

use io_uring::{opcode, types};

use super::ring;
use super::{Backend, Listener, Stream};

#[derive(Debug, Clone, Copy)]
pub struct Uring;

pub struct UringStream {
    fd: OwnedFd,
}

/// Accepts after a one-shot poll on the ring and `accept4`, not an
/// io_uring accept: when the accept loop stops (drain, restart in place),
/// no accept stays in flight to take a connection nobody serves.
pub struct UringListener(std::net::TcpListener);

fn os_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// Waits on the ring until `fd` has `events` (a one-shot poll; a dropped
/// wait is cancelled and consumes nothing).
async fn poll(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    let entry = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
    let (res, _, ()) = ring::submit(entry, ()).await;
    if res < 0 {
        return Err(os_err(res));
    }
    Ok(())
}

impl Stream for UringStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        let len = buf.len();
        let room = (buf.capacity() - len).min(u32::MAX as usize) as u32;
        // SAFETY: the pointer is into the spare capacity of `buf`, whose heap
        // block moves with it into the operation and stays alive until the
        // kernel answers.
        let ptr = unsafe { buf.as_mut_ptr().add(len) };
        loop {
            let entry = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, room).build();
            let (res, _, b) = ring::submit(entry, buf).await;
            buf = b;
            if res == -libc::EINTR {
                continue;
            }
            if res < 0 {
                return (Err(os_err(res)), buf);
            }
            // SAFETY: the kernel wrote `res` bytes after `len`.
            unsafe { buf.set_len(len + res as usize) };
            return (Ok(res as usize), buf);
        }
    }

    async fn write_all(&mut self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut off = 0;
        while off < buf.len() {
            let left = (buf.len() - off).min(u32::MAX as usize) as u32;
            // SAFETY: as in `read`; the bytes stay where they are until answered.
            let ptr = unsafe { buf.as_ptr().add(off) };
            let entry = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), ptr, left).flags(libc::MSG_NOSIGNAL).build();
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

    async fn read_ready(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        // A poll, then a plain recv: nothing that takes bytes is in flight
        // while this wait may be abandoned.
        let fd = self.fd.as_raw_fd();
        loop {
            poll(fd, libc::POLLIN).await?;
            if let Some(n) = super::recv_now(fd, buf)? {
                return Ok(n);
            }
        }
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
                Ok((s, peer)) => return Ok((UringStream { fd: s.into() }, peer)),
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
        Ok(UringStream { fd: s.into() })
    }

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        let sa = Box::new(socket2::SockAddr::from(addr));
        let entry = opcode::Connect::new(types::Fd(sock.as_raw_fd()), sa.as_ptr(), sa.len()).build();
        let (res, _, _sa) = ring::submit(entry, sa).await;
        if res < 0 {
            return Err(os_err(res));
        }
        Ok(UringStream { fd: sock.into() })
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        super::probe_uring().map_err(io::Error::other)?;
        ring::block_on(fut)
    }
}
