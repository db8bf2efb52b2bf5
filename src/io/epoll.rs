//! The epoll backend: tokio's current-thread runtime and its reactor.
//! `workers.io = "auto"` picks it (measured cheaper on the Agent's traffic),
//! and so does `"epoll"`; it is the one to choose where io_uring is
//! unavailable (Docker's default seccomp profile, old kernels), since
//! `"uring"` there fails the start.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Backend, Listener, Stream, Strided};

#[derive(Debug, Clone, Copy)]
pub struct Epoll;

pub struct EpollStream(tokio::net::TcpStream);
pub struct EpollListener(tokio::net::TcpListener);

impl Stream for EpollStream {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        // read_buf fills the spare capacity without zeroing it first.
        let res = self.0.read_buf(&mut buf).await;
        (res, buf)
    }

    async fn read_max(&mut self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        let fd = self.0.as_raw_fd();
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
            // try_io clears the readiness when the read would block.
            let res = self.0.try_io(tokio::io::Interest::READABLE, || match super::recv_now_max(fd, &mut buf, max) {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            });
            match res {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return (other, buf),
            }
        }
    }

    async fn read_strided(&mut self, mut buf: Vec<u8>, reads: Strided) -> (io::Result<usize>, Vec<u8>) {
        let fd = self.0.as_raw_fd();
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
            let res = self.0.try_io(tokio::io::Interest::READABLE, || match super::readv_now(fd, &mut buf, &reads) {
                Ok(Some(n)) => Ok(n),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            });
            match res {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return (other, buf),
            }
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = self.0.write_all(&buf).await;
        (res, buf)
    }

    async fn read_ready(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        // Through tokio's poll_read, which clears the socket's readiness
        // after a short read: the next wait goes to epoll instead of a recv
        // that would only say EAGAIN (`readable` + `try_read_buf` kept the
        // readiness, and cost that recv once per request). Cancel safe.
        self.0.read_buf(buf).await
    }

    /// Through tokio's readiness: a socket the reactor knows is drained (a
    /// short read cleared its readiness, and no event came since) answers
    /// "nothing" without a system call. The pool's liveness check before
    /// every reuse costs no `recv` that way.
    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        if buf.capacity() == buf.len() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
        }
        match self.0.try_read_buf(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Write)
    }

    fn set_nodelay(&self) -> io::Result<()> {
        self.0.set_nodelay(true)
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Listener for EpollListener {
    type Stream = EpollStream;
    async fn accept(&self) -> io::Result<(EpollStream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((EpollStream(s), a))
    }
}

impl Backend for Epoll {
    type Stream = EpollStream;
    type Listener = EpollListener;
    const NAME: &'static str = "epoll";

    fn listener(l: std::net::TcpListener) -> io::Result<EpollListener> {
        l.set_nonblocking(true)?;
        Ok(EpollListener(tokio::net::TcpListener::from_std(l)?))
    }

    fn stream(s: std::net::TcpStream) -> io::Result<EpollStream> {
        s.set_nonblocking(true)?;
        Ok(EpollStream(tokio::net::TcpStream::from_std(s)?))
    }

    async fn connect(addr: SocketAddr) -> io::Result<EpollStream> {
        Ok(EpollStream(tokio::net::TcpStream::connect(addr).await?))
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let local = tokio::task::LocalSet::new();
        Ok(local.block_on(&rt, fut))
    }
}
