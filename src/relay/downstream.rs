//! The Agent side of a connection: its socket, the read buffer (a small idle
//! one between requests, a pooled one during a request) and bounded writes.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use super::{IDLE_BUF, IO_BUF};
use crate::buffers::BufferPool;
use crate::io::Stream;

/// The Agent side of a connection: the socket and its read buffer.
pub(super) struct Downstream<S: Stream> {
    pub(super) io: S,
    /// Unconsumed input is `buf[start..]`. Between requests this is the small
    /// idle buffer; during a request with more input, a pooled one.
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) eof: bool,
    /// The idle buffer, kept here while `buf` is a pooled one.
    pub(super) idle: Vec<u8>,
    /// How long a write to the Agent may stall (it stopped reading).
    pub(super) write_timeout: Duration,
}

impl<S: Stream> Downstream<S> {
    pub(super) fn filled(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more input; may move to a pooled buffer, and grow it up to
    /// `limit` bytes for an oversized head. `Ok(0)` at EOF.
    pub(super) async fn fill(&mut self, limit: usize, pool: &RefCell<BufferPool>) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            if self.buf.capacity() <= IDLE_BUF {
                // More than the idle buffer holds: borrow a pooled one.
                self.borrow_big(pool);
            } else {
                let room = limit.saturating_sub(self.buf.capacity()).max(1);
                self.buf.reserve_exact(room.min(self.buf.capacity().max(IO_BUF)));
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = self.io.read(buf).await;
        self.buf = buf;
        let n = res?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Between requests: waits for the next request's first bytes, into the
    /// idle buffer. Cancel-safe (see [`Stream::read_ready`]): a drain or an
    /// idle timeout can abandon it without losing a byte of the next request.
    pub(super) async fn fill_ready(&mut self) -> io::Result<usize> {
        if !self.io.is_armed() && self.buf.len() == self.buf.capacity() {
            self.buf.reserve(IDLE_BUF);
        }
        let n = self.io.read_ready(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Takes back the read an abandoned [`Self::fill_ready`] left armed
    /// (io_uring): `Ok(n)` bytes of the next request it had read (0: none).
    /// Before the socket changes hands, so that no byte goes missing.
    pub(super) async fn disarm(&mut self) -> io::Result<usize> {
        match self.io.disarm(&mut self.buf).await? {
            None => Ok(0),
            Some(0) => {
                self.eof = true;
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the Agent closed the connection"))
            }
            Some(n) => Ok(n),
        }
    }

    /// Moves to a pooled buffer (body reads: a whole record per read).
    pub(super) fn borrow_big(&mut self, pool: &RefCell<BufferPool>) {
        if self.buf.capacity() <= IDLE_BUF {
            let mut big = pool.borrow_mut().take();
            big.extend_from_slice(&self.buf[self.start..]);
            let mut idle = std::mem::replace(&mut self.buf, big);
            idle.clear();
            self.idle = idle;
            self.start = 0;
        }
    }

    /// Between requests: give a borrowed buffer back and wait on the idle one.
    pub(super) fn park(&mut self, pool: &RefCell<BufferPool>) {
        if self.filled().is_empty() && self.buf.capacity() > IDLE_BUF && self.idle.capacity() > 0 {
            let big = std::mem::replace(&mut self.buf, std::mem::take(&mut self.idle));
            pool.borrow_mut().give_back(big);
            self.buf.clear();
            self.start = 0;
        }
    }

    pub(super) async fn write(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let write = self.io.write_all(std::mem::take(out));
        let Ok((res, buf)) = crate::rt::timeout(self.write_timeout, write).await else {
            // The buffer stays with the cancelled operation; the connection is done.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the Agent stopped reading (limits.client_idle_timeout)",
            ));
        };
        *out = buf;
        out.clear();
        res
    }
}

#[cfg(test)]
mod tests {
    //! The Agent side's framing over the in-memory backend.
    use super::*;
    use crate::io::mem::{pair, Mem, PIPE_CAPACITY};
    use crate::io::Backend;

    #[test]
    fn waits_buffers_and_writes_of_an_agent_connection() {
        Mem::block_on(async {
            let (mut agent, ours) = pair();
            let pool = RefCell::new(BufferPool::new(4));
            let mut down = Downstream {
                io: ours,
                buf: Vec::with_capacity(IDLE_BUF),
                start: 0,
                eof: false,
                idle: Vec::new(),
                write_timeout: Duration::from_millis(50),
            };
            // The wait between requests, abandoned, loses nothing.
            assert!(crate::rt::timeout(Duration::from_millis(10), down.fill_ready()).await.is_err());
            let head = b"POST /api/v2/series HTTP/1.1\r\n".to_vec();
            agent.write_all(head.clone()).await.0.unwrap();
            assert_eq!(down.fill_ready().await.unwrap(), head.len());
            assert_eq!(down.filled(), &head[..]);
            // More than the idle buffer holds: a pooled buffer is borrowed,
            // the bytes read so far move with it, and it goes back when idle.
            let body = vec![b'x'; 3 * IDLE_BUF];
            agent.write_all(body.clone()).await.0.unwrap();
            while down.filled().len() < head.len() + body.len() {
                assert!(down.fill(IO_BUF, &pool).await.unwrap() > 0);
            }
            assert!(down.buf.capacity() > IDLE_BUF, "a pooled buffer carries the request");
            assert_eq!(&down.filled()[..head.len()], &head[..]);
            down.consume(head.len());
            assert_eq!(down.filled(), &body[..]);
            down.consume(body.len());
            down.park(&pool);
            assert_eq!((down.buf.capacity(), pool.borrow().free_count()), (IDLE_BUF, 1));
            // An Agent that stops reading: the write gives up after write_timeout.
            let mut answer = vec![0u8; 2 * PIPE_CAPACITY];
            let err = down.write(&mut answer).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            // The Agent goes away: end of stream.
            drop(agent);
            assert_eq!(down.fill_ready().await.unwrap(), 0);
            assert!(down.eof);
        })
        .unwrap();
    }
}
