//! The io_uring backend: tokio-uring, one ring per worker thread.
//! Reads and writes hand their owned buffer to the kernel for the duration
//! of the operation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio_uring::buf::BoundedBuf;

use super::{Backend, Listener, Stream};

/// Submission queue entries per worker ring.
const RING_ENTRIES: u32 = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Uring;

pub struct UringStream(tokio_uring::net::TcpStream);
pub struct UringListener(tokio_uring::net::TcpListener);

impl Stream for UringStream {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(buf.capacity() > buf.len(), "read needs spare capacity");
        let len = buf.len();
        let (res, slice) = self.0.read(buf.slice(len..)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(buf).await
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }

    fn set_nodelay(&self) -> io::Result<()> {
        self.0.set_nodelay(true)
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Listener for UringListener {
    type Stream = UringStream;
    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((UringStream(s), a))
    }
}

impl Backend for Uring {
    type Stream = UringStream;
    type Listener = UringListener;
    const NAME: &'static str = "io_uring";

    fn listener(l: std::net::TcpListener) -> io::Result<UringListener> {
        Ok(UringListener(tokio_uring::net::TcpListener::from_std(l)))
    }

    async fn connect(addr: SocketAddr) -> io::Result<UringStream> {
        Ok(UringStream(tokio_uring::net::TcpStream::connect(addr).await?))
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        super::probe_uring().map_err(io::Error::other)?;
        Ok(tokio_uring::builder().entries(RING_ENTRIES).start(fut))
    }
}
