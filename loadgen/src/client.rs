//! A tiny blocking HTTP/1.1 client for tests: write one request with a
//! Content-Length body, read one answer (Content-Length, chunked or
//! close-delimited, skipping 1xx interim answers). Works over any
//! `Write`/`BufRead` — a plain `TcpStream` or a rustls `StreamOwned`. It owns
//! no connection and no retry logic, and must not be used outside tests and
//! benches (bodies are buffered whole).

use std::io::{self, BufRead, Read, Write};

use crate::wire::{self, Framing, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS};

/// Host sent when the caller gives none.
pub const DEFAULT_HOST: &str = "localhost";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names lowercased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Writes one request and flushes. Adds `Host: localhost` unless `headers`
/// has a Host, and `Content-Length: body.len()` unless `headers` has a
/// Content-Length or Transfer-Encoding (then `body` is written as given, so
/// a test can send a pre-encoded chunked body, see [`encode_chunked`]).
pub fn send(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {DEFAULT_HOST}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    stream.flush()
}

/// `body` in chunked transfer coding, `chunk_size` bytes a chunk (at least
/// 1), with the final zero chunk and no trailers.
pub fn encode_chunked(body: &[u8], chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk_size.max(1) * 8 + 8);
    for chunk in body.chunks(chunk_size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed in the middle of the {what}"))
}

/// Appends one line to `out`; `Ok(0)` at end of stream.
fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let n = r.by_ref().take(max as u64).read_until(b'\n', out)?;
    if n == max && !out.ends_with(b"\n") {
        return Err(invalid(format!("line longer than {max} bytes")));
    }
    Ok(n)
}

/// Reads one final answer (1xx interim answers are skipped). A HEAD request,
/// 204 and 304 have no body.
pub fn read_response(stream: &mut impl BufRead, head_request: bool) -> io::Result<Response> {
    loop {
        let mut head = Vec::with_capacity(512);
        loop {
            let start = head.len();
            if start >= MAX_HEAD {
                return Err(invalid(format!("answer head larger than {MAX_HEAD} bytes")));
            }
            let n = read_line(stream, &mut head, MAX_HEAD - start)?;
            if n == 0 || !head.ends_with(b"\n") {
                return Err(if head.is_empty() {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before any answer")
                } else {
                    eof("answer head")
                });
            }
            if wire::is_blank_line(&head[start..]) {
                if start == 0 {
                    head.clear();
                    continue;
                }
                break;
            }
        }
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut parsed);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("incomplete answer head")),
            Err(e) => return Err(invalid(format!("malformed answer head: {e}"))),
        }
        let status = resp.code.unwrap_or_default();
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else {
            let framing = wire::framing(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .map_err(|e| invalid(e.to_string()))?
                .unwrap_or(Framing::Close);
            read_body(stream, framing)?
        };
        return Ok(Response { status, headers, body });
    }
}

fn read_exact_into(r: &mut impl BufRead, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let got = r.by_ref().take(len).read_to_end(out)?;
    if (got as u64) < len {
        return Err(eof("answer body"));
    }
    Ok(())
}

fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match framing {
        Framing::Length(len) => read_exact_into(r, len, &mut body)?,
        Framing::Close => {
            r.read_to_end(&mut body)?;
        }
        Framing::Chunked => {
            let mut line = Vec::with_capacity(32);
            loop {
                line.clear();
                if read_line(r, &mut line, MAX_CHUNK_LINE)? == 0 || !line.ends_with(b"\n") {
                    return Err(eof("chunked answer body"));
                }
                let size = wire::parse_chunk_size(&line).ok_or_else(|| invalid("bad chunk size line in answer"))?;
                if size == 0 {
                    break;
                }
                read_exact_into(r, size, &mut body)?;
                line.clear();
                if read_line(r, &mut line, 2)? == 0 || !wire::is_blank_line(&line) {
                    return Err(invalid("chunk not followed by CRLF in answer"));
                }
            }
            let mut trailer_bytes = 0;
            loop {
                line.clear();
                let n = read_line(r, &mut line, MAX_HEAD - trailer_bytes)?;
                if n == 0 || !line.ends_with(b"\n") {
                    return Err(eof("chunked answer trailers"));
                }
                if wire::is_blank_line(&line) {
                    break;
                }
                trailer_bytes += n;
            }
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_adds_host_and_length() {
        let mut out = Vec::new();
        send(&mut out, "POST", "/api/v2/series", &[("DD-API-KEY", "k")], b"abc").unwrap();
        assert_eq!(
            out,
            b"POST /api/v2/series HTTP/1.1\r\nHost: localhost\r\nDD-API-KEY: k\r\nContent-Length: 3\r\n\r\nabc"
        );
        let mut out = Vec::new();
        let chunked = encode_chunked(b"hello", 2);
        assert_eq!(chunked, b"2\r\nhe\r\n2\r\nll\r\n1\r\no\r\n0\r\n\r\n");
        send(&mut out, "POST", "/p", &[("Host", "h"), ("Transfer-Encoding", "chunked")], &chunked).unwrap();
        assert!(out.starts_with(b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n"));
    }

    #[test]
    fn reads_length_chunked_close_and_interim() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\
HTTP/1.1 503 Service Unavailable\r\n\r\nrest of stream";
        let mut r = io::BufReader::with_capacity(5, &wire[..]);
        let a = read_response(&mut r, false).unwrap();
        assert_eq!((a.status, a.body.as_slice()), (202, &b"{}"[..]));
        assert_eq!(a.header("content-length"), Some("2"));
        let b = read_response(&mut r, false).unwrap();
        assert_eq!((b.status, b.body.as_slice()), (200, &b"abcde"[..]));
        let c = read_response(&mut r, true).unwrap();
        assert_eq!((c.status, c.body.len()), (200, 0));
        let d = read_response(&mut r, false).unwrap();
        assert_eq!((d.status, d.body.as_slice()), (503, &b"rest of stream"[..]));
        let e = read_response(&mut r, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn truncated_body_is_an_error() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        let e = read_response(&mut &wire[..], false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
