//! Reading one HTTP/1.1 request from the intake side of a connection: the
//! head (bounded by `MAX_HEAD`, parsed with httparse) and the body, which is
//! streamed through a `BodyHasher` as it is read — Content-Length or chunked,
//! decoded — and never buffered whole. Owns no sockets and writes nothing.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::hash::BodyHasher;
use crate::wire::{self, Framing, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS};

/// Leading empty lines tolerated before a request line (RFC 9112 §2.2).
const MAX_LEADING_BLANK_LINES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading the request from the client failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed request: {0}")]
    Malformed(String),
}

fn unexpected_eof(what: &str) -> ReadError {
    ReadError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("client closed the connection in the middle of the {what}"),
    ))
}

#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Names lowercased, in order received.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept after this exchange.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("");
        if self.minor_version == 0 {
            wire::has_token(connection, "keep-alive")
        } else {
            !wire::has_token(connection, "close")
        }
    }

    pub fn expects_continue(&self) -> bool {
        self.minor_version >= 1 && self.header("expect").is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// Body framing; a request with neither header has an empty body.
    pub fn framing(&self) -> Result<Framing, ReadError> {
        let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        match wire::framing(headers) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Ok(Framing::Length(0)),
            Err(e) => Err(ReadError::Malformed(e.to_string())),
        }
    }
}

/// Appends one line (through `\n`) to `out`; returns the bytes appended, 0
/// at end of stream. A line longer than `max` is malformed.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, ReadError> {
    let mut appended = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(appended);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (buf.len(), false),
        };
        if appended + take > max {
            return Err(ReadError::Malformed(format!("line longer than {max} bytes")));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        appended += take;
        if done {
            return Ok(appended);
        }
    }
}

/// Reads and parses one request head. `Ok(None)` when the client closed the
/// connection cleanly before sending anything.
pub(crate) async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<RequestHead>, ReadError> {
    let mut head = Vec::with_capacity(1024);
    let mut blank_lines = 0;
    loop {
        let start = head.len();
        if start >= MAX_HEAD {
            return Err(ReadError::Malformed(format!("request head larger than {MAX_HEAD} bytes")));
        }
        let n = read_line_bounded(r, &mut head, MAX_HEAD - start).await?;
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(unexpected_eof("request head")) };
        }
        if !head.ends_with(b"\n") {
            return Err(unexpected_eof("request head"));
        }
        if wire::is_blank_line(&head[start..]) {
            if start == 0 {
                blank_lines += 1;
                if blank_lines > MAX_LEADING_BLANK_LINES {
                    return Err(ReadError::Malformed("too many empty lines".into()));
                }
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ReadError::Malformed("incomplete request head".into())),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    }
    Ok(Some(RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor_version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    }))
}

/// Where a body's decoded bytes go: a [`BodyHasher`], optionally with the
/// first byte flipped on the way (the mock's `CorruptRecord` fault).
pub(crate) struct HashSink<'a> {
    hasher: &'a mut BodyHasher,
    /// Flip the next byte that arrives, then stop flipping.
    flip_next: bool,
    /// Read no faster than this (the mock's `SlowRead` fault).
    throttle: Option<Throttle>,
}

/// A read rate: bytes per second since the body's first byte.
pub(crate) struct Throttle {
    bytes_per_s: u64,
    start: tokio::time::Instant,
    done: u64,
}

/// With a throttle, the body is taken in pieces this big at most.
const THROTTLE_PIECE: usize = 8 * 1024;

impl<'a> HashSink<'a> {
    pub fn new(hasher: &'a mut BodyHasher, flip_first_byte: bool) -> Self {
        HashSink { hasher, flip_next: flip_first_byte, throttle: None }
    }

    /// Reads the body at no more than `bytes_per_s`.
    pub fn throttled(mut self, bytes_per_s: u64) -> Self {
        self.throttle = Some(Throttle { bytes_per_s: bytes_per_s.max(1), start: tokio::time::Instant::now(), done: 0 });
        self
    }

    /// After `n` more bytes, waits until the rate allows them.
    pub(crate) async fn pace(&mut self, n: usize) {
        if let Some(t) = &mut self.throttle {
            t.done += n as u64;
            let due = t.start + Duration::from_secs_f64(t.done as f64 / t.bytes_per_s as f64);
            tokio::time::sleep_until(due).await;
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match bytes.split_first() {
            Some((&first, rest)) if self.flip_next => {
                self.flip_next = false;
                self.hasher.update(&[first ^ 0xff]);
                self.hasher.update(rest);
            }
            _ => self.hasher.update(bytes),
        }
    }
}

impl<'a> From<&'a mut BodyHasher> for HashSink<'a> {
    fn from(hasher: &'a mut BodyHasher) -> Self {
        HashSink::new(hasher, false)
    }
}

/// Passes exactly `len` bytes through `hasher`.
async fn stream_exact<R: AsyncBufRead + Unpin>(
    r: &mut R,
    mut len: u64,
    hasher: &mut HashSink<'_>,
) -> Result<(), ReadError> {
    while len > 0 {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(unexpected_eof("request body"));
        }
        let piece = if hasher.throttle.is_some() { THROTTLE_PIECE } else { usize::MAX };
        let take = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX)).min(piece);
        hasher.update(&buf[..take]);
        r.consume(take);
        len -= take as u64;
        hasher.pace(take).await;
    }
    Ok(())
}

/// Reads a body framed by `framing`, hashing the decoded bytes; returns the
/// decoded length.
///
/// # Backpressure
/// Holds at most one buffer of the reader's capacity; bytes are hashed and
/// dropped as they arrive.
pub(crate) async fn read_body<R: AsyncBufRead + Unpin>(
    r: &mut R,
    framing: Framing,
    hasher: &mut HashSink<'_>,
) -> Result<u64, ReadError> {
    match framing {
        Framing::Length(len) => {
            stream_exact(r, len, hasher).await?;
            Ok(len)
        }
        Framing::Chunked => read_chunked(r, hasher).await,
        Framing::Close => Err(ReadError::Malformed("request body without length".into())),
    }
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R, hasher: &mut HashSink<'_>) -> Result<u64, ReadError> {
    let mut total: u64 = 0;
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        if read_line_bounded(r, &mut line, MAX_CHUNK_LINE).await? == 0 || !line.ends_with(b"\n") {
            return Err(unexpected_eof("chunked body"));
        }
        let size = wire::parse_chunk_size(&line)
            .ok_or_else(|| ReadError::Malformed(format!("bad chunk size line {:?}", String::from_utf8_lossy(&line))))?;
        if size == 0 {
            break;
        }
        stream_exact(r, size, hasher).await?;
        total = total.checked_add(size).ok_or_else(|| ReadError::Malformed("chunked body too large".into()))?;
        line.clear();
        if read_line_bounded(r, &mut line, 2).await? == 0 || !line.ends_with(b"\n") {
            return Err(unexpected_eof("chunked body"));
        }
        if !wire::is_blank_line(&line) {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
    }
    // Trailers, up to the empty line.
    let mut trailer_bytes = 0;
    loop {
        line.clear();
        let n = read_line_bounded(r, &mut line, MAX_HEAD - trailer_bytes).await?;
        if n == 0 || !line.ends_with(b"\n") {
            return Err(unexpected_eof("chunked trailers"));
        }
        if wire::is_blank_line(&line) {
            return Ok(total);
        }
        trailer_bytes += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::body_hash;
    use tokio::io::{AsyncReadExt, BufReader};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    /// Decodes a chunked body through a reader with a tiny buffer, so chunk
    /// boundaries and buffer boundaries never line up.
    fn decode_chunked(wire: &[u8], cap: usize) -> (Result<u64, ReadError>, u64, Vec<u8>) {
        block_on(async {
            let mut r = BufReader::with_capacity(cap, wire);
            let mut h = BodyHasher::new();
            let res = read_body(&mut r, Framing::Chunked, &mut (&mut h).into()).await;
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            (res, h.finish(), rest)
        })
    }

    #[test]
    fn chunked_decoding() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for cap in [1, 2, 3, 7, 64, 4096] {
            let (res, hash, rest) = decode_chunked(wire, cap);
            assert_eq!(res.unwrap(), 16, "cap {cap}");
            assert_eq!(hash, body_hash(b"hello 0123456789"));
            assert_eq!(rest, b"NEXT", "pipelined bytes left in place");
        }
    }

    #[test]
    fn hash_sink_flips_only_the_first_byte() {
        let mut h = BodyHasher::new();
        let mut sink = HashSink::new(&mut h, true);
        sink.update(b"");
        sink.update(b"ab");
        sink.update(b"cd");
        assert_eq!(h.finish(), body_hash(&[b'a' ^ 0xff, b'b', b'c', b'd']));
    }

    #[test]
    fn chunked_malformed_and_truncated() {
        assert!(matches!(decode_chunked(b"zz\r\nhello\r\n0\r\n\r\n", 64).0, Err(ReadError::Malformed(_))));
        assert!(matches!(decode_chunked(b"5\r\nhelloXX0\r\n\r\n", 64).0, Err(ReadError::Malformed(_))));
        assert!(matches!(
            decode_chunked(b"5\r\nhel", 64).0,
            Err(ReadError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }

    #[test]
    fn head_parsing() {
        let wire = b"\r\nPOST /api/v2/series?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        block_on(async {
            let mut r = BufReader::new(&wire[..]);
            let head = read_head(&mut r).await.unwrap().unwrap();
            assert_eq!(head.method, "POST");
            assert_eq!(head.target, "/api/v2/series?x=1");
            assert_eq!(head.header("host"), Some("a.example"));
            assert!(!head.keep_alive());
            assert_eq!(head.framing().unwrap(), Framing::Length(3));
            let mut h = BodyHasher::new();
            assert_eq!(read_body(&mut r, Framing::Length(3), &mut (&mut h).into()).await.unwrap(), 3);
            assert_eq!(h.finish(), body_hash(b"abc"));
            assert!(read_head(&mut r).await.unwrap().is_none());
        });
        block_on(async {
            let mut r = BufReader::new(&b"GARBAGE\r\n\r\n"[..]);
            assert!(matches!(read_head(&mut r).await, Err(ReadError::Malformed(_))));
            let big = vec![b'a'; MAX_HEAD + 10];
            let mut r = BufReader::new(&big[..]);
            assert!(matches!(read_head(&mut r).await, Err(ReadError::Malformed(_))));
        });
    }
}
