//! The epoll backend: tokio's current-thread runtime and its reactor.
//! `workers.io = "auto"` picks it (measured cheaper on the Agent's traffic),
//! and so does `"epoll"`; it is the one to choose where io_uring is
//! unavailable (Docker's default seccomp profile, old kernels), since
//! `"uring"` there fails the start.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::{Backend, Listener, Stream, Strided};

#[derive(Debug, Clone, Copy)]
pub struct Epoll;

pub struct EpollStream(tokio::net::TcpStream);
pub struct EpollListener(tokio::net::TcpListener);

impl EpollStream {
    /// Runs `read` (up to `want` bytes, without blocking) if tokio's
    /// readiness says the socket may hold bytes; a short read clears the
    /// readiness, as tokio's own reads do.
    fn read_clearing(
        &self,
        want: usize,
        mut read: impl FnMut() -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        let mut got = None;
        let res = self.0.try_io(tokio::io::Interest::READABLE, || match read() {
            Ok(Some(n)) => {
                got = Some(n);
                if n > 0 && n < want {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            }
            Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        });
        match res {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(got),
        }
    }
}

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
        loop {
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
            match self.try_read_strided_now(&mut buf, &reads) {
                Ok(None) => continue,
                Ok(Some(n)) => return (Ok(n), buf),
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = self.0.write_all(&buf).await;
        (res, buf)
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        // Through tokio's poll_read, which clears the socket's readiness
        // after a short read: the next wait goes to epoll instead of a recv
        // that would only say EAGAIN (`readable` + `try_read_buf` kept the
        // readiness, and cost that recv once per request). Cancel safe.
        let len = buf.len();
        let mut spare = ReadBuf::uninit(buf.spare_capacity_mut());
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut spare))?;
        let n = spare.filled().len();
        // SAFETY: poll_read initialised the `n` bytes it filled.
        unsafe { buf.set_len(len + n) };
        Poll::Ready(Ok(n))
    }

    /// Through tokio's readiness, like `try_read_now`: a socket the reactor
    /// knows is full answers "nothing" without a system call.
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        match self.0.try_write(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Through tokio's readiness: a socket the reactor knows is drained (a
    /// short read cleared its readiness, and no event came since) answers
    /// "nothing" without a system call. The pool's liveness check before
    /// every reuse costs no `recv` that way.
    /// A short read (the socket drained) clears the readiness, as tokio's
    /// own reads do: the read after it waits for epoll instead of asking
    /// the socket, which would only say EAGAIN.
    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let room = buf.capacity() - buf.len();
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
        }
        let fd = self.0.as_raw_fd();
        self.read_clearing(room, || super::recv_now(fd, buf))
    }

    /// Through tokio's readiness: a socket known drained costs no readv,
    /// and a short read (the socket drained) clears the readiness, as
    /// tokio's own reads do, so the next wait goes to epoll rather than to
    /// a read that would only say EAGAIN.
    fn try_read_strided_now(&mut self, buf: &mut Vec<u8>, reads: &Strided) -> io::Result<Option<usize>> {
        let fd = self.0.as_raw_fd();
        self.read_clearing(reads.total, || super::readv_now(fd, buf, reads))
    }

    async fn readable(&mut self) -> io::Result<bool> {
        self.0.readable().await.map(|()| true)
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
