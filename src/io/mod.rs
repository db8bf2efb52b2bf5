//! The owned-buffer I/O seam between the relay and its two backends.
//!
//! Everything above this module is generic over [`Backend`]: it reads into and
//! writes from owned `Vec<u8>` buffers (the io_uring model, where the kernel
//! holds the buffer while the operation is in flight) and never names the
//! ring or tokio's reactor. Timers and task spawning go through
//! [`crate::rt`], which uses the loop this thread runs: the hand-driven ring
//! ([`ring`], the io_uring backend) or tokio's current-thread runtime (the
//! epoll backend).
//!
//! # Invariants
//! `read` appends after `buf.len()` and never grows the buffer: the caller
//! keeps spare capacity, so memory stays bounded by the buffer size.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::task::{Context, Poll};

pub mod epoll;
pub mod mem;
pub mod ring;
pub mod uring;

/// A connected TCP stream.
#[allow(async_fn_in_trait)]
pub trait Stream: 'static {
    /// Reads into the spare capacity of `buf` (after `len()`), appending.
    /// `Ok(0)` is end of stream. The caller must leave spare capacity.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// As [`Stream::read`], but reads at most `max` bytes (the room for one
    /// record's plaintext in a lent record buffer). Only while no read is
    /// armed.
    async fn read_max(&mut self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>);
    /// A vectored read into `buf`'s spare capacity, at the places
    /// `reads` gives (several TLS records' plaintext, each between the
    /// room for its header and for its tag, [`Strided`]), filled in order;
    /// `buf.len()` is left as it was and the bytes read are returned (the
    /// caller lays out what surrounds them). `Ok(0)` is end of stream.
    /// Backends without vectored reads fill the first place only. Only
    /// while no read is armed.
    async fn read_strided(&mut self, buf: Vec<u8>, reads: Strided) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (res, mut buf) = self.read_max(buf, reads.len.min(reads.total)).await;
        // SAFETY: shortening only; the bytes stay initialised.
        unsafe { buf.set_len(len) };
        (res, buf)
    }
    /// Writes all of `buf[..len()]`.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Waits until the socket is readable, then appends what it holds to
    /// the spare capacity of `buf`; `Ok(0)` at end of stream. Cancel-safe:
    /// dropped before it returns, it has consumed nothing, or (io_uring)
    /// it left its read armed with `buf` (see [`Stream::arm`]), whereas a
    /// dropped `read` may leave an io_uring operation in flight that eats
    /// the next bytes. For waits that may be abandoned (between requests).
    async fn read_ready(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx, buf)).await
    }
    /// [`Stream::read_ready`] as a poll, for a wait that borrows the stream
    /// only while it is polled (an HTTP/2 connection's task waits for the
    /// intake this way while its exchanges write on the same session).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>>;
    /// Writes what the socket takes of `buf` now, without waiting:
    /// `Ok(None)` when it takes nothing (full, or a backend that cannot
    /// tell without waiting). Only while no write is in flight.
    fn try_write_now(&mut self, _buf: &[u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }
    /// Appends what the stream holds right now to the spare capacity of
    /// `buf`, without waiting: `Ok(None)` when nothing is there, `Ok(Some(0))`
    /// at end of stream. Only while no read is in flight (pooled sessions).
    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        recv_now(self.raw_fd(), buf)
    }
    /// Leaves a read armed on an idle stream, into the spare capacity of
    /// `buf`, which the stream holds meanwhile (`buf` is left empty, a
    /// placeholder the caller must not fill). The next `read`,
    /// `read_ready`, `try_read_now` or `disarm` hands the buffer back with
    /// what arrived. So an idle stream learns of bytes, FIN or reset when
    /// they come, without a probe. Backends without it leave `buf` alone.
    fn arm(&mut self, _buf: &mut Vec<u8>) {}
    /// Whether a read is armed (its buffer is with the stream).
    fn is_armed(&self) -> bool {
        false
    }
    /// Cancels an armed read and puts its buffer back in `buf`:
    /// `Ok(None)` when it had read nothing, `Ok(Some(0))` at end of
    /// stream, `Ok(Some(n))` for `n` bytes appended. `Ok(None)` when none
    /// was armed.
    async fn disarm(&mut self, _buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        Ok(None)
    }
    /// A vectored read of what the socket holds now, into the places of
    /// `reads` in `buf`'s spare capacity (as [`Stream::read_strided`]:
    /// `buf.len()` is left as it was): `Ok(None)` when nothing is there,
    /// or for a backend that cannot read without waiting. `Ok(Some(0))` is
    /// end of stream. Only while no read is armed.
    fn try_read_strided_now(&mut self, _buf: &mut Vec<u8>, _reads: &Strided) -> io::Result<Option<usize>> {
        Ok(None)
    }
    /// Waits until the socket has bytes to read, or its end. `Ok(false)`:
    /// this backend cannot wait without reading (read instead).
    async fn readable(&mut self) -> io::Result<bool> {
        Ok(false)
    }
    /// Half-closes the write side.
    fn shutdown_write(&self) -> io::Result<()>;
    fn set_nodelay(&self) -> io::Result<()>;
    fn raw_fd(&self) -> RawFd;
}

/// Where a vectored read puts its bytes, from `buf.len()` on: the first
/// place holds `first` bytes, and each after it `len` bytes, `stride`
/// bytes after the start of the one before (counted as if the first were
/// `len` long: `stride - len` bytes lie between two places); the places
/// hold `total` bytes in all (the last one may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    pub len: usize,
    pub stride: usize,
    pub total: usize,
    pub first: usize,
}

impl Strided {
    /// Places all `len` long, the first included.
    pub fn even(len: usize, stride: usize, total: usize) -> Strided {
        Strided { len, stride, total, first: len }
    }

    /// The places as `(offset from buf.len(), length)`.
    pub fn places(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let gap = self.stride - self.len;
        let (mut at, mut room, mut left) = (0, self.first, self.total);
        std::iter::from_fn(move || {
            while left > 0 {
                let place = (at, room.min(left));
                at += room + gap;
                room = self.len;
                if place.1 > 0 {
                    left -= place.1;
                    return Some(place);
                }
            }
            None
        })
    }

    /// Bytes of spare capacity the places reach.
    pub fn room(&self) -> usize {
        self.places().last().map_or(0, |(at, len)| at + len)
    }

    /// Writes the places as iovecs into `buf`'s spare capacity into `iov`
    /// (at most [`MAX_PLACES`]: a read into the first ones is a shorter
    /// read, and the rest waits for the next); returns how many.
    fn iovecs(&self, buf: &mut Vec<u8>, iov: &mut [libc::iovec; MAX_PLACES]) -> usize {
        assert!(buf.capacity() - buf.len() >= self.room(), "strided read past the buffer");
        let base = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut n = 0;
        for ((at, len), slot) in self.places().zip(iov.iter_mut()) {
            // SAFETY: every place is within the spare capacity (asserted).
            *slot = libc::iovec { iov_base: unsafe { base.add(at) }.cast(), iov_len: len };
            n += 1;
        }
        n
    }
}

/// The most places one vectored read fills.
pub const MAX_PLACES: usize = 16;

/// An empty iovec array, for [`Strided::iovecs`].
pub fn no_iovecs() -> [libc::iovec; MAX_PLACES] {
    [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_PLACES]
}

/// `readv` into the places of `reads`, without blocking: `Ok(None)` when
/// nothing is waiting.
fn readv_now(fd: RawFd, buf: &mut Vec<u8>, reads: &Strided) -> io::Result<Option<usize>> {
    // On the stack: no allocation per read.
    let mut iov = no_iovecs();
    let count = reads.iovecs(buf, &mut iov);
    if count == 0 {
        return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
    }
    // SAFETY: the iovecs point into `buf`'s spare capacity, which outlives
    // the call; readv writes at most their lengths.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), count as libc::c_int) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    Ok(Some(n as usize))
}

/// A listening socket.
#[allow(async_fn_in_trait)]
pub trait Listener: 'static {
    type Stream: Stream;
    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)>;
}

/// An I/O backend: how a worker runs its event loop and makes sockets.
#[allow(async_fn_in_trait)]
pub trait Backend: Copy + Send + 'static {
    type Stream: Stream;
    type Listener: Listener<Stream = Self::Stream>;
    const NAME: &'static str;
    /// Wraps a bound, listening, non-blocking std listener.
    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Wraps an accepted std stream (one handed over by a previous process).
    fn stream(s: std::net::TcpStream) -> io::Result<Self::Stream>;
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream>;
    /// Runs `fut` to completion on this thread's event loop, where
    /// [`crate::rt`]'s spawn, sleep and timeout work.
    fn block_on<F: Future>(fut: F) -> io::Result<F::Output>;
}

/// Reports whether io_uring can be used by this process, and why not.
pub fn probe_uring() -> Result<(), String> {
    match io_uring::IoUring::new(8) {
        Ok(ring) if !ring.params().is_feature_ext_arg() => {
            Err("io_uring lacks timed waits (IORING_FEAT_EXT_ARG): Linux 5.11 or newer is needed".to_string())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| format!(", kernel.io_uring_disabled = {}", s.trim()))
                .unwrap_or_default();
            // Seccomp mode 2: a filter is active (container runtimes' default
            // profiles answer io_uring_setup with EPERM or ENOSYS).
            let filtered = std::fs::read_to_string("/proc/self/status")
                .map(|s| s.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')))
                .unwrap_or(false);
            let hint = match (e.raw_os_error(), filtered) {
                (Some(libc::EPERM | libc::ENOSYS), true) => {
                    " (blocked by this process's seccomp filter: Docker's and podman's default profiles block io_uring)"
                }
                (Some(libc::EPERM), false) => " (blocked by sysctl or a security module)",
                (Some(libc::ENOSYS), false) => " (kernel without io_uring)",
                _ => "",
            };
            Err(format!("io_uring_setup failed: {e}{hint}{disabled}"))
        }
    }
}

/// Reads what the socket already holds, without blocking, into the spare
/// capacity of `buf` (appending). `Ok(None)`: nothing waiting; `Ok(Some(0))`:
/// end of stream. Only for sockets with no I/O operation in flight (pooled).
pub fn recv_now(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    recv_now_max(fd, buf, usize::MAX)
}

/// [`recv_now`], reading at most `max` bytes.
pub fn recv_now_max(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() || max == 0 {
        return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room to read"));
    }
    let room = spare.len().min(max);
    // SAFETY: recv writes at most `room` bytes into the spare capacity, and
    // set_len covers exactly the bytes it wrote.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(Some(n as usize))
}

/// Sends what the socket takes of `buf` now, without blocking: `Ok(None)`
/// when it takes nothing. Only for sockets with no write in flight.
pub fn send_now(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: send reads at most `buf.len()` bytes of `buf`.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    Ok(Some(n as usize))
}

/// What a vectored read does, from a slice: fills the places of `reads`
/// in `buf`'s spare capacity from `src`, at most `cap` bytes; returns how
/// many. For tests of what lays places out.
#[cfg(test)]
pub(crate) fn fill_places(buf: &mut Vec<u8>, reads: &Strided, src: &[u8], cap: usize) -> usize {
    assert!(buf.capacity() - buf.len() >= reads.room(), "strided read past the buffer");
    let mut n = 0;
    for (at, len) in reads.places() {
        let take = len.min(src.len() - n).min(cap - n);
        for k in 0..take {
            buf.spare_capacity_mut()[at + k].write(src[n + k]);
        }
        n += take;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::Strided;

    #[test]
    fn strided_places_start_with_a_short_first_one() {
        // Records of 10 bytes with 4 around each: the first has 3 left.
        let s = Strided { len: 10, stride: 14, total: 25, first: 3 };
        assert_eq!(s.places().collect::<Vec<_>>(), vec![(0, 3), (7, 10), (21, 10), (35, 2)]);
        assert_eq!(s.room(), 37);
        let even = Strided::even(10, 14, 25);
        assert_eq!(even.places().collect::<Vec<_>>(), vec![(0, 10), (14, 10), (28, 5)]);
        // A first place with no room is skipped.
        let s = Strided { len: 10, stride: 14, total: 5, first: 0 };
        assert_eq!(s.places().collect::<Vec<_>>(), vec![(4, 5)]);
    }
}
