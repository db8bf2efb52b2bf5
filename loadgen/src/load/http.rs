//! One HTTP/1.1 client connection of the load generator: writes a request
//! (head and body from caller-owned buffers, one vectored write), reads the
//! answer to its end (Content-Length, chunked or close-delimited; 1xx
//! interim answers skipped) into a reused buffer that keeps no body, and
//! says whether the connection may be reused. Owns the socket and its read
//! buffer; it never builds bodies, retries or keeps statistics.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, Framing, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS};

/// Read buffer per connection.
const READ_BUFFER: usize = 16 * 1024;

/// Why an exchange failed, by the class the report counts.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot connect to the target: {0}")]
    Connect(#[source] io::Error),
    #[error("the target reset or closed the connection: {0}")]
    Reset(#[source] io::Error),
    #[error("malformed answer from the target: {0}")]
    Malformed(String),
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl ExchangeError {
    fn from_io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero => ExchangeError::Reset(e),
            _ => ExchangeError::Io(e),
        }
    }
}

/// What came back for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Bytes read from the socket for this answer (heads and body).
    pub bytes: u64,
    /// Whether the connection can carry the next request.
    pub reusable: bool,
}

/// A client connection and its read buffer.
pub struct Connection {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Connection, ExchangeError> {
        let stream = TcpStream::connect(addr).await.map_err(ExchangeError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Connection { stream, buf: vec![0; READ_BUFFER].into_boxed_slice(), start: 0, end: 0 })
    }

    /// Sends `head` then `body` and reads the answer to its end.
    pub async fn exchange(&mut self, head: &[u8], body: &[u8]) -> Result<Answer, ExchangeError> {
        self.write_two(head, body).await.map_err(ExchangeError::from_io)?;
        self.read_answer().await
    }

    async fn write_two(&mut self, a: &[u8], b: &[u8]) -> io::Result<()> {
        let (mut a_done, mut b_done) = (0, 0);
        while a_done < a.len() || b_done < b.len() {
            let n = if a_done < a.len() {
                let slices = [IoSlice::new(&a[a_done..]), IoSlice::new(&b[b_done..])];
                self.stream.write_vectored(&slices).await?
            } else {
                self.stream.write(&b[b_done..]).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let to_a = n.min(a.len() - a_done);
            a_done += to_a;
            b_done += n - to_a;
        }
        Ok(())
    }

    /// Reads more bytes into the buffer (compacting it first); 0 at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer head larger than the read buffer"));
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    async fn fill_or_eof(&mut self, what: &str, bytes: &mut u64) -> Result<(), ExchangeError> {
        let n = self.fill().await.map_err(ExchangeError::from_io)?;
        if n == 0 {
            return Err(ExchangeError::Reset(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in the middle of the {what}"),
            )));
        }
        *bytes += n as u64;
        Ok(())
    }

    async fn read_answer(&mut self) -> Result<Answer, ExchangeError> {
        let mut bytes = 0u64;
        loop {
            let (status, framing, reusable) = self.read_head(&mut bytes).await?;
            if (100..200).contains(&status) {
                continue;
            }
            let framing = if status == 204 || status == 304 { Framing::Length(0) } else { framing };
            match framing {
                Framing::Length(n) => self.skip_exact(n, "answer body", &mut bytes).await?,
                Framing::Chunked => self.skip_chunked(&mut bytes).await?,
                Framing::Close => {
                    self.start = self.end;
                    loop {
                        let n = self.fill().await.map_err(ExchangeError::from_io)?;
                        if n == 0 {
                            break;
                        }
                        bytes += n as u64;
                        self.start = self.end;
                    }
                    return Ok(Answer { status, bytes, reusable: false });
                }
            }
            return Ok(Answer { status, bytes, reusable });
        }
    }

    /// Parses one answer head; returns status, framing and keep-alive.
    async fn read_head(&mut self, bytes: &mut u64) -> Result<(u16, Framing, bool), ExchangeError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = answer.code.unwrap_or(0);
                    let http10 = answer.version == Some(0);
                    let mut connection_close = http10;
                    let mut pairs = Vec::new();
                    for h in answer.headers.iter() {
                        if h.name.eq_ignore_ascii_case("connection") {
                            let value = std::str::from_utf8(h.value).unwrap_or("");
                            if wire::has_token(value, "close") {
                                connection_close = true;
                            } else if http10 && wire::has_token(value, "keep-alive") {
                                connection_close = false;
                            }
                        } else if h.name.eq_ignore_ascii_case("content-length")
                            || h.name.eq_ignore_ascii_case("transfer-encoding")
                        {
                            pairs.push((h.name, std::str::from_utf8(h.value).unwrap_or("?")));
                        }
                    }
                    let framing = wire::framing(pairs.into_iter())
                        .map_err(|e| ExchangeError::Malformed(e.to_string()))?
                        .unwrap_or(Framing::Close);
                    self.start += len;
                    let reusable = !connection_close && framing != Framing::Close;
                    return Ok((status, framing, reusable));
                }
                Ok(httparse::Status::Partial) => {
                    if self.end - self.start >= MAX_HEAD.min(self.buf.len()) {
                        return Err(ExchangeError::Malformed("answer head too large".into()));
                    }
                }
                Err(e) => return Err(ExchangeError::Malformed(e.to_string())),
            }
            self.fill_or_eof("answer head", bytes).await?;
        }
    }

    async fn skip_exact(&mut self, mut len: u64, what: &str, bytes: &mut u64) -> Result<(), ExchangeError> {
        loop {
            let available = (self.end - self.start) as u64;
            let take = available.min(len);
            self.start += take as usize;
            len -= take;
            if len == 0 {
                return Ok(());
            }
            self.fill_or_eof(what, bytes).await?;
        }
    }

    /// Reads one line (through `\n`) and returns its length including the
    /// line end; the line is `buf[start - len..start]` afterwards.
    async fn take_line(&mut self, bytes: &mut u64) -> Result<usize, ExchangeError> {
        loop {
            if let Some(pos) = self.buf[self.start..self.end].iter().position(|&b| b == b'\n') {
                self.start += pos + 1;
                return Ok(pos + 1);
            }
            if self.end - self.start > MAX_CHUNK_LINE {
                return Err(ExchangeError::Malformed("chunk line too long".into()));
            }
            self.fill_or_eof("chunked answer body", bytes).await?;
        }
    }

    async fn skip_chunked(&mut self, bytes: &mut u64) -> Result<(), ExchangeError> {
        loop {
            let n = self.take_line(bytes).await?;
            let line = &self.buf[self.start - n..self.start];
            let size = wire::parse_chunk_size(line).ok_or_else(|| {
                ExchangeError::Malformed(format!("bad chunk size line {:?}", String::from_utf8_lossy(line)))
            })?;
            if size == 0 {
                break;
            }
            self.skip_exact(size, "chunked answer body", bytes).await?;
            let n = self.take_line(bytes).await?;
            if !wire::is_blank_line(&self.buf[self.start - n..self.start]) {
                return Err(ExchangeError::Malformed("chunk not followed by CRLF".into()));
            }
        }
        // Trailers up to the empty line.
        let mut trailer_bytes = 0;
        loop {
            let n = self.take_line(bytes).await?;
            if wire::is_blank_line(&self.buf[self.start - n..self.start]) {
                return Ok(());
            }
            trailer_bytes += n;
            if trailer_bytes > MAX_HEAD {
                return Err(ExchangeError::Malformed("chunked trailers too large".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Serves `answer` (in pieces of `piece` bytes) to one request, then
    /// `second` to a second one on the same connection.
    fn exchange_with(answer: &'static [u8], piece: usize) -> (Result<Answer, ExchangeError>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = vec![0u8; 64];
                let mut n = 0;
                while n < 10 {
                    n += s.read(&mut got[n..]).await.unwrap();
                }
                for part in answer.chunks(piece) {
                    s.write_all(part).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
                got.truncate(n);
                got
            });
            let mut conn = Connection::open(addr).await.unwrap();
            let res = conn.exchange(b"HEAD", b"+BODY0").await;
            let got = server.await.unwrap();
            (res, got)
        })
    }

    #[test]
    fn reads_length_chunked_and_close_delimited_answers() {
        for piece in [1, 3, 1000] {
            let (res, got) = exchange_with(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}", piece);
            assert_eq!(got, b"HEAD+BODY0");
            assert_eq!(res.unwrap(), Answer { status: 202, bytes: 46, reusable: true });
            let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n";
            let res = exchange_with(chunked, piece).0.unwrap();
            assert_eq!((res.status, res.reusable, res.bytes), (503, true, chunked.len() as u64));
            let res = exchange_with(b"HTTP/1.1 200 OK\r\n\r\nuntil close", piece).0.unwrap();
            assert_eq!((res.status, res.reusable), (200, false));
            let res = exchange_with(b"HTTP/1.1 202 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", piece);
            assert!(!res.0.unwrap().reusable);
        }
    }

    #[test]
    fn truncated_and_malformed_answers() {
        let res = exchange_with(b"HTTP/1.1 202 Accepted\r\nContent-Length: 20\r\n\r\n{}", 100).0;
        assert!(matches!(res, Err(ExchangeError::Reset(_))), "{res:?}");
        let res = exchange_with(b"HTTP/1.1 202 Acc", 100).0;
        assert!(matches!(res, Err(ExchangeError::Reset(_))), "{res:?}");
        let res = exchange_with(b"garbage\r\n\r\n", 100).0;
        assert!(matches!(res, Err(ExchangeError::Malformed(_))), "{res:?}");
    }
}
