//! The io_uring backend: tokio-uring, one ring per worker thread.
//! Reads and writes hand their owned buffer to the kernel for the duration
//! of the operation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_uring::buf::BoundedBuf;

use super::{Backend, Listener, Stream};

/// Submission queue entries per worker ring.
const RING_ENTRIES: u32 = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Uring;

pub struct UringStream {
    /// Readiness through the runtime's epoll reactor, registered at the
    /// first cancel-safe wait. Declared first: it deregisters before the
    /// socket closes.
    ready: Option<AsyncFd<BorrowedSocket>>,
    inner: tokio_uring::net::TcpStream,
}

impl UringStream {
    fn new(inner: tokio_uring::net::TcpStream) -> Self {
        UringStream { ready: None, inner }
    }
}

/// The socket's descriptor, borrowed from the `TcpStream` that owns it.
struct BorrowedSocket(RawFd);

impl AsRawFd for BorrowedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
/// Accepts through readiness (the runtime's epoll reactor) and `accept4`,
/// not an io_uring accept: when the accept loop stops (drain, restart in
/// place), no accept stays in flight to take a connection nobody serves.
pub struct UringListener(AsyncFd<std::net::TcpListener>);

impl Stream for UringStream {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        let len = buf.len();
        let (res, slice) = self.inner.read(buf.slice(len..)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.inner.write_all(buf).await
    }

    async fn read_ready(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        // A plain recv, never an io_uring read: nothing stays in flight if
        // this wait is abandoned.
        let fd = self.inner.as_raw_fd();
        if self.ready.is_none() {
            // The first request often arrives with the connection: no
            // registration needed when it is already there.
            if let Some(n) = super::recv_now(fd, buf)? {
                return Ok(n);
            }
            // SAFETY: `fd` is owned by `self.inner`, which outlives `ready`
            // (dropped first, by field order) and never changes descriptor.
            let registered = unsafe { AsyncFd::register_with_interest(BorrowedSocket(fd), Interest::READABLE) };
            self.ready = Some(registered?);
        }
        let ready = self.ready.as_ref().expect("registered above");
        loop {
            let mut guard = ready.readable().await?;
            let room = buf.capacity() - buf.len();
            match super::recv_now(fd, buf)? {
                Some(n) => {
                    // A short read emptied the socket: forget this readiness
                    // now rather than learn it from an EAGAIN at the next
                    // wait. Bytes that arrive later are a new edge, which
                    // clear_ready never erases.
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                None => guard.clear_ready(),
            }
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Write)
    }

    fn set_nodelay(&self) -> io::Result<()> {
        self.inner.set_nodelay(true)
    }

    fn raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Listener for UringListener {
    type Stream = UringStream;
    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((s, peer))) => return Ok((UringStream::new(tokio_uring::net::TcpStream::from_std(s)), peer)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
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
        // SAFETY: the AsyncFd owns the listener, hence its descriptor.
        let registered = unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) };
        Ok(UringListener(registered?))
    }

    fn stream(s: std::net::TcpStream) -> io::Result<UringStream> {
        // Handed over by an epoll process, the socket may be O_NONBLOCK (a
        // flag of the shared file description). Kernel 6.18 waits anyway,
        // but io_uring reads of an O_NONBLOCK file may return EAGAIN on
        // others; clear it, as for sockets this backend accepts itself.
        s.set_nonblocking(false)?;
        Ok(UringStream::new(tokio_uring::net::TcpStream::from_std(s)))
    }

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        Ok(UringStream::new(tokio_uring::net::TcpStream::connect(addr).await?))
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        super::probe_uring().map_err(io::Error::other)?;
        Ok(tokio_uring::builder().entries(RING_ENTRIES).start(fut))
    }
}
