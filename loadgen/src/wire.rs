//! HTTP/1.1 framing rules shared by the mock intake (async) and the test
//! client (blocking): body framing from headers, chunk-size lines, reason
//! phrases. Pure functions over bytes; owns no I/O.

/// Largest request or response head (request line + headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line accepted (with extensions).
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most header fields parsed in one head.
pub const MAX_HEADERS: usize = 128;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Responses only: the body runs to the end of the connection.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    BadContentLength,
    ConflictingContentLength,
    UnsupportedTransferEncoding,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramingError::BadContentLength => "Content-Length is not a number",
            FramingError::ConflictingContentLength => "Content-Length values disagree",
            FramingError::UnsupportedTransferEncoding => "Transfer-Encoding does not end with chunked",
        })
    }
}

/// Framing from (lowercased name, value) headers. `None` when the message
/// carries neither Content-Length nor Transfer-Encoding. Transfer-Encoding
/// wins over Content-Length (RFC 9112 §6.3).
pub fn framing<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Option<Framing>, FramingError> {
    let mut length: Option<u64> = None;
    let mut last_coding: Option<String> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(coding) = value.rsplit(',').map(str::trim).find(|c| !c.is_empty()) {
                last_coding = Some(coding.to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FramingError::BadContentLength);
                }
                let n: u64 = part.parse().map_err(|_| FramingError::BadContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::ConflictingContentLength);
                }
                length = Some(n);
            }
        }
    }
    match last_coding.as_deref() {
        Some("chunked") => Ok(Some(Framing::Chunked)),
        Some(_) => Err(FramingError::UnsupportedTransferEncoding),
        None => Ok(length.map(Framing::Length)),
    }
}

/// Size of a chunk from its size line (CRLF or LF already included or not);
/// extensions after `;` are ignored. `None` when malformed.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let size = line.split(';').next()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// True when `line` is an empty line (`\r\n` or `\n`).
pub fn is_blank_line(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// Comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"0\r\n"), Some(0));
        assert_eq!(parse_chunk_size(b"FF;name=value\r\n"), Some(255));
        assert_eq!(parse_chunk_size(b"10 ; ext\n"), Some(16));
        assert_eq!(parse_chunk_size(b"\r\n"), None);
        assert_eq!(parse_chunk_size(b"xyz\r\n"), None);
        assert_eq!(parse_chunk_size(b"11111111111111111\r\n"), None);
    }

    #[test]
    fn framing_rules() {
        let f = |h: &[(&'static str, &'static str)]| framing(h.iter().copied());
        assert_eq!(f(&[]), Ok(None));
        assert_eq!(f(&[("content-length", "12")]), Ok(Some(Framing::Length(12))));
        assert_eq!(f(&[("content-length", "12, 12")]), Ok(Some(Framing::Length(12))));
        assert_eq!(
            f(&[("content-length", "12"), ("content-length", "13")]),
            Err(FramingError::ConflictingContentLength)
        );
        assert_eq!(f(&[("content-length", "-1")]), Err(FramingError::BadContentLength));
        assert_eq!(f(&[("transfer-encoding", "gzip, chunked"), ("content-length", "5")]), Ok(Some(Framing::Chunked)));
        assert_eq!(f(&[("transfer-encoding", "gzip")]), Err(FramingError::UnsupportedTransferEncoding));
    }
}
