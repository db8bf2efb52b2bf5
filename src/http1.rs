//! HTTP/1.1 message heads and body framing, as the relay needs them.
//!
//! Owns: parsing request and answer heads (httparse), rejecting ambiguous
//! framing before anything is forwarded, rewriting the request head for the
//! upstream (Host, hop-by-hop headers, Expect) and the answer head for the
//! Agent, the `Connection` field of every answer, and the incremental
//! chunked-body scanner. It does no I/O and never decides a status for an
//! upstream fault.
//!
//! # Invariants
//! A request that could be framed two ways (the classic smuggling shapes) is
//! never accepted: both Content-Length and Transfer-Encoding, differing or
//! comma-listed Content-Length, any Transfer-Encoding other than a single
//! `chunked`, bare CR or LF, NUL, obs-fold, whitespace before a colon.
//!
//! An answer head never leaves the Agent guessing whether the connection
//! stays open: `Connection: close` when the relay will close it, and
//! `Connection: keep-alive` to an HTTP/1.0 client it keeps (HTTP/1.0 is not
//! persistent by default, so without the field the client waits for a close
//! that comes only at `limits.client_idle_timeout`). An HTTP/1.0 client never
//! gets chunked framing: such a body reaches it decoded, delimited by close.

use std::fmt::Write as _;

/// At most this many header fields in one head.
pub const MAX_HEADERS: usize = 128;

/// Why a request was refused; the `Display` text goes in the 400 body and log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
    #[error("request target must be origin-form (start with '/')")]
    TargetForm,
    #[error("both Content-Length and Transfer-Encoding are present")]
    LengthAndChunked,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("Transfer-Encoding other than a single final 'chunked'")]
    BadTransferEncoding,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("Expect other than 100-continue")]
    BadExpect,
    #[error("body of {len} bytes exceeds limits.max_body_bytes ({limit})")]
    BodyTooLarge { len: u64, limit: u64 },
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

impl RequestError {
    /// The status the Agent gets for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::HeadTooLarge { .. } | RequestError::TooManyHeaders => 431,
            RequestError::BodyTooLarge { .. } => 413,
            RequestError::BadExpect => 417,
            _ => 400,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Answer only: the body runs until the upstream closes.
    UntilClose,
}

/// The Agent's side of one exchange, as far as the answer head depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientConn {
    /// The request was HTTP/1.0: a connection kept open must be announced
    /// (`Connection: keep-alive`), and chunked framing is unknown to it.
    pub http10: bool,
    /// The connection closes after this answer.
    pub close: bool,
}

impl ClientConn {
    /// An answer after which the relay closes the connection, whatever the version.
    pub const CLOSE: ClientConn = ClientConn { http10: false, close: true };

    /// The `Connection` field line (CRLF included) an answer on this
    /// connection carries; empty for an HTTP/1.1 connection kept open, where
    /// persistence is the default.
    pub fn connection_field(self) -> &'static str {
        match (self.close, self.http10) {
            (true, _) => "Connection: close\r\n",
            (false, true) => "Connection: keep-alive\r\n",
            (false, false) => "",
        }
    }
}

/// A parsed request head, with the upstream form already rendered.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes the head took in the input.
    pub head_len: usize,
    pub method: Method,
    /// Where the request target (origin-form, as received) sits in the
    /// rendered upstream head; see [`RequestHead::target`]. No copy is made.
    pub target_range: std::ops::Range<usize>,
    pub framing: BodyFraming,
    /// The client waits for `100 Continue` before sending the body. Never set
    /// for HTTP/1.0, where the expectation is ignored (RFC 9110 §10.1.1): an
    /// HTTP/1.0 client cannot read an interim answer.
    pub expect_continue: bool,
    /// The client asked to close after this exchange (or is HTTP/1.0 without keep-alive).
    pub close: bool,
    pub http10: bool,
}

impl RequestHead {
    /// The connection as the client asked for it; the relay may still close.
    pub fn client(&self) -> ClientConn {
        ClientConn { http10: self.http10, close: self.close }
    }

    /// The request target, read from the upstream head `parse_request` rendered.
    pub fn target<'a>(&self, rendered: &'a [u8]) -> &'a [u8] {
        &rendered[self.target_range.clone()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// Hop-by-hop fields never forwarded either way (RFC 9110 §7.6.1), plus
/// `Expect`, which the relay answers itself.
fn is_hop_by_hop(name: &str) -> bool {
    is_hop_by_hop_bytes(name.as_bytes())
}

fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    [&b"connection"[..], b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Content-Length and Transfer-Encoding: never removed on a `Connection` token.
fn is_framing_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Bytes a head may not contain: NUL, a CR not followed by LF, an LF not
/// preceded by CR, obs-fold (a line starting with SP or HTAB).
fn check_line_endings(head: &[u8]) -> Result<(), RequestError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            0 => return Err(RequestError::Malformed("NUL byte in head")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(RequestError::Malformed("bare CR in head")),
            b'\n' => {
                if i == 0 || head[i - 1] != b'\r' {
                    return Err(RequestError::Malformed("bare LF line ending in head"));
                }
                if matches!(head.get(i + 1), Some(b' ') | Some(b'\t')) {
                    return Err(RequestError::Malformed("obsolete line folding in head"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_content_length(v: &[u8]) -> Result<u64, RequestError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::BadContentLength);
    }
    std::str::from_utf8(v).unwrap().parse().map_err(|_| RequestError::BadContentLength)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &v[start..end]
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses and validates a request head from `buf`, and renders the head to
/// send upstream into `out` (cleared first). `Ok(None)`: need more bytes.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    max_body: u64,
    upstream_host: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = parse_request_line(&mut req, buf, max_head)? else { return Ok(None) };
    let method_str = req.method.unwrap_or("");
    let target = req.path.unwrap_or("").as_bytes();
    if !target.starts_with(b"/") {
        return Err(RequestError::TargetForm);
    }
    let http10 = req.version == Some(0);
    let fields = RequestFields::read(req.headers, http10)?;
    let framing = fields.framing(max_body)?;
    let target_range = render_upstream_head(out, method_str, target, upstream_host, req.headers, &fields, framing);
    Ok(Some(RequestHead {
        head_len,
        method: match method_str {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        },
        target_range,
        framing,
        expect_continue: fields.expect_continue && !http10,
        close: fields.close_token || (http10 && !fields.keep_alive_token),
        http10,
    }))
}

/// Runs httparse over `buf` within `max_head`: the head's length once it
/// is complete, `None` while it is not (a bare CR or LF is refused early
/// rather than waiting for a head that never ends).
fn parse_request_line<'h, 'b>(
    req: &mut httparse::Request<'h, 'b>,
    buf: &'b [u8],
    max_head: usize,
) -> Result<Option<usize>, RequestError> {
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        Err(httparse::Error::HeaderName) => return Err(RequestError::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::Malformed("invalid header value")),
        Err(httparse::Error::NewLine) => return Err(RequestError::Malformed("invalid line ending")),
        Err(httparse::Error::Token) => return Err(RequestError::Malformed("invalid method or target")),
        Err(_) => return Err(RequestError::Malformed("invalid request line")),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() >= max_head {
                return Err(RequestError::HeadTooLarge { limit: max_head });
            }
            if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
                check_line_endings(&buf[..=last_nl])?;
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > max_head {
        return Err(RequestError::HeadTooLarge { limit: max_head });
    }
    check_line_endings(&buf[..head_len])?;
    Ok(Some(head_len))
}

/// What a request's fields say about its framing and its connection.
struct RequestFields<'b> {
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
    // `close` wins over `keep-alive`, whatever their order.
    close_token: bool,
    keep_alive_token: bool,
    /// The options `Connection` names (their fields are not forwarded).
    connection_tokens: Vec<&'b [u8]>,
}

impl<'b> RequestFields<'b> {
    /// Reads the fields that matter, refusing the shapes that could be
    /// read two ways (smuggling) or that the relay cannot honour.
    fn read(headers: &[httparse::Header<'b>], http10: bool) -> Result<Self, RequestError> {
        let mut f = RequestFields {
            content_length: None,
            chunked: false,
            expect_continue: false,
            close_token: false,
            keep_alive_token: false,
            connection_tokens: Vec::new(),
        };
        let mut host_seen = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let v = parse_content_length(h.value)?;
                if f.content_length.is_some_and(|c| c != v) {
                    return Err(RequestError::BadContentLength);
                }
                f.content_length = Some(v);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if f.chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err(RequestError::BadTransferEncoding);
                }
                f.chunked = true;
            } else if name.eq_ignore_ascii_case("host") {
                if host_seen {
                    return Err(RequestError::DuplicateHost);
                }
                host_seen = true;
            } else if name.eq_ignore_ascii_case("expect") {
                if !trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                    return Err(RequestError::BadExpect);
                }
                f.expect_continue = true;
            } else if name.eq_ignore_ascii_case("connection") {
                f.close_token |= has_token(h.value, "close");
                f.keep_alive_token |= has_token(h.value, "keep-alive");
                f.connection_tokens.extend(h.value.split(|&b| b == b',').map(trim));
            }
        }
        if f.chunked && f.content_length.is_some() {
            return Err(RequestError::LengthAndChunked);
        }
        // `Connection: content-length` would strip the framing field from the
        // upstream head while the body is still forwarded: a smuggling shape.
        if f.connection_tokens.iter().any(|t| is_framing_field(t)) {
            return Err(RequestError::Malformed("Connection header names a framing field"));
        }
        if f.chunked && http10 {
            return Err(RequestError::BadTransferEncoding);
        }
        Ok(f)
    }

    fn framing(&self, max_body: u64) -> Result<BodyFraming, RequestError> {
        let framing = match (self.chunked, self.content_length) {
            (true, _) => BodyFraming::Chunked,
            (false, Some(0)) | (false, None) => BodyFraming::None,
            (false, Some(n)) => BodyFraming::Length(n),
        };
        if let BodyFraming::Length(n) = framing {
            if n > max_body {
                return Err(RequestError::BodyTooLarge { len: n, limit: max_body });
            }
        }
        Ok(framing)
    }
}

/// Renders the upstream head into `out`: request line, Host, then every
/// end-to-end field as received. Returns where the target lies in `out`.
fn render_upstream_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &[u8],
    upstream_host: Option<&str>,
    headers: &[httparse::Header],
    fields: &RequestFields,
    framing: BodyFraming,
) -> std::ops::Range<usize> {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let target_range = out.len()..out.len() + target.len();
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = upstream_host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut wrote_length = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("expect")
            || is_hop_by_hop(name)
            || fields.connection_tokens.iter().any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if wrote_length {
                continue; // identical duplicate: forward one
            }
            wrote_length = true;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if framing == BodyFraming::None && method != "GET" && method != "HEAD" && !wrote_length {
        // A POST without a body still needs an explicit length upstream.
        out.extend_from_slice(b"Content-Length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    target_range
}

/// A parsed answer head from the upstream.
#[derive(Debug)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: BodyFraming,
    /// The upstream will close the session after this answer.
    pub upstream_close: bool,
    /// What the rendered head tells the Agent: whether the relay closes the
    /// connection after this answer. It closes when asked to, after a body
    /// delimited by the upstream's close, and after a decoded chunked body.
    pub client: ClientConn,
    /// The body is chunked and the client speaks HTTP/1.0: it must be sent
    /// decoded ([`ChunkedScanner::dechunk`]), the head carries neither
    /// Transfer-Encoding nor Content-Length, and the close ends the body.
    pub dechunk: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("answer head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed answer head: {0}")]
    Malformed(String),
    #[error("ambiguous answer framing")]
    Framing,
}

/// Parses an upstream answer head and renders the head for the Agent into
/// `out`. `Ok(None)`: need more bytes. 1xx answers are returned as parsed
/// with `BodyFraming::None`; the caller skips them. `client` is the Agent
/// connection as the request asked for it; the returned head says what the
/// rendered head announced ([`ResponseHead::client`]).
///
/// # Invariants
/// The rendered head never announces a connection kept open that the body's
/// framing cannot delimit, and never sends Transfer-Encoding to an HTTP/1.0
/// client.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    request_method: Method,
    client: ClientConn,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                return Err(ResponseError::TooLarge(max_head));
            }
            return Ok(None);
        }
        Ok(httparse::Status::Complete(n)) if n > max_head => return Err(ResponseError::TooLarge(max_head)),
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return Err(ResponseError::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    // httparse takes any three digits; a status the Agent can't read back is refused (502).
    if !(100..=999).contains(&status) {
        return Err(ResponseError::Malformed(format!("status code {status:03} out of range")));
    }
    let http10 = resp.version == Some(0);
    let reason = resp.reason.unwrap_or("").as_bytes();
    let fields = resp.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    render_answer(status, reason, http10, head_len, fields, request_method, client, out).map(Some)
}

/// What an answer's fields say about its framing and its connection.
struct AnswerFraming<'f> {
    content_length: Option<u64>,
    chunked: bool,
    close_token: bool,
    keep_alive_token: bool,
    /// The options `Connection` names (their fields are not passed on).
    connection_tokens: Vec<&'f [u8]>,
}

impl<'f> AnswerFraming<'f> {
    fn read(fields: impl Iterator<Item = (&'f [u8], &'f [u8])>) -> Result<Self, ResponseError> {
        let mut f = AnswerFraming {
            content_length: None,
            chunked: false,
            close_token: false,
            keep_alive_token: false,
            connection_tokens: Vec::new(),
        };
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = parse_content_length(value).map_err(|_| ResponseError::Framing)?;
                if f.content_length.is_some_and(|c| c != v) {
                    return Err(ResponseError::Framing);
                }
                f.content_length = Some(v);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if !has_token(value, "chunked") {
                    return Err(ResponseError::Framing);
                }
                f.chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                // `close` wins over `keep-alive`, whatever their order.
                f.close_token |= has_token(value, "close");
                f.keep_alive_token |= has_token(value, "keep-alive");
                // The framing fields are kept whatever Connection says: the Agent must
                // frame the body exactly as the relay does.
                f.connection_tokens.extend(value.split(|&b| b == b',').map(trim).filter(|t| !is_framing_field(t)));
            }
        }
        Ok(f)
    }
}

/// Reads an intake answer's head (from either protocol: its status, the
/// reason phrase HTTP/1.1 gave, its fields in order) and renders the head
/// for the Agent into `out`. 1xx answers are returned as read with
/// `BodyFraming::None` and nothing rendered; the caller skips them.
/// `client` is the Agent connection as the request asked for it; the
/// returned head says what the rendered one announces.
#[allow(clippy::too_many_arguments)]
pub fn render_answer<'f>(
    status: u16,
    reason: &[u8],
    http10: bool,
    head_len: usize,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    request_method: Method,
    client: ClientConn,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, ResponseError> {
    let f = AnswerFraming::read(fields.clone())?;
    let mut upstream_close = f.close_token || (http10 && !f.keep_alive_token);
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 || request_method == Method::Head {
        BodyFraming::None
    } else if f.chunked {
        BodyFraming::Chunked
    } else if let Some(n) = f.content_length {
        BodyFraming::Length(n)
    } else {
        upstream_close = true;
        BodyFraming::UntilClose
    };
    if (100..200).contains(&status) {
        return Ok(ResponseHead { head_len, status, framing, upstream_close, client, dechunk: false });
    }
    let dechunk = client.http10 && framing == BodyFraming::Chunked;
    let client =
        ClientConn { http10: client.http10, close: client.close || framing == BodyFraming::UntilClose || dechunk };

    out.clear();
    // Status line as received, but always HTTP/1.1 towards the Agent.
    let _ = write!(Vec8(out), "HTTP/1.1 {} ", status);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        if is_hop_by_hop_bytes(name) || f.connection_tokens.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        // A field named like the relay's own Connection option ("close";
        // "keep-alive" is hop-by-hop already) would become connection-specific
        // on the Agent's hop (RFC 9110 §7.6.1): dropped. Found by fuzzing.
        if name.eq_ignore_ascii_case(b"close") {
            continue;
        }
        // HTTP/1.0 has no transfer codings; a decoded body has no length either.
        if (client.http10 && name.eq_ignore_ascii_case(b"transfer-encoding"))
            || (dechunk && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(client.connection_field().as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(ResponseHead { head_len, status, framing, upstream_close, client, dechunk })
}

/// `fmt::Write` over a byte vector, for status lines.
struct Vec8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Vec8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Renders a short plain-text answer made by the relay itself, with the
/// `Connection` field `client` calls for.
pub fn local_response(status: u16, body: &str, client: ClientConn, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(
        Vec8(out),
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n{}",
        status,
        reason(status),
        body.len() + 1,
        client.connection_field(),
        body
    );
    out.push(b'\n');
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Incremental scanner for a chunked body: tells how many input bytes belong
/// to the body (forwarded verbatim) and when it ends. Strict: CRLF only,
/// hex sizes of at most 15 digits, bounded extensions and trailers.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Decoded payload bytes seen so far.
    pub payload: u64,
    /// Size of the chunk whose size line is being read.
    pending: u64,
    line_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    SizeStart,
    Size { value: u64, digits: u8 },
    Ext,
    SizeLf { last: bool },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf { empty: bool },
    Done,
}

/// Longest chunk-size line extension or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner { state: ChunkState::SizeStart, payload: 0, pending: 0, line_len: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `input`; returns how many bytes belong to the body. Stops at the
    /// end of the body (the rest is the next message).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, &'static str> {
        self.scan_until::<false>(input).map(|(n, _)| n)
    }

    /// Scans `buf` as [`ChunkedScanner::scan`] does and moves the chunk data
    /// it holds to the front of `buf`, dropping the framing (sizes,
    /// extensions, trailers), for a client that cannot read chunked framing.
    /// Returns how many bytes of `buf` belong to the body and how many
    /// decoded payload bytes now start `buf`. Never allocates; never reads or
    /// writes past the body's end.
    pub fn dechunk(&mut self, buf: &mut [u8]) -> Result<(usize, usize), &'static str> {
        let (mut used, mut decoded) = (0, 0);
        while used < buf.len() && !self.is_done() {
            let (n, data) = self.scan_until::<true>(&buf[used..])?;
            if let Some(data) = data {
                buf.copy_within(used + data.start..used + data.end, decoded);
                decoded += data.len();
            }
            used += n;
        }
        Ok((used, decoded))
    }

    /// The scanner proper. With `STOP_AFTER_DATA`, returns right after a run
    /// of chunk data with where it lies in `input`.
    fn scan_until<const STOP_AFTER_DATA: bool>(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<std::ops::Range<usize>>), &'static str> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Done => return Ok((i, None)),
                ChunkState::Data(left) => {
                    let take = (left as usize).min(input.len() - i);
                    self.payload += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                    if STOP_AFTER_DATA {
                        return Ok((i, Some(i - take..i)));
                    }
                    continue;
                }
                _ => self.state = self.step(input[i])?,
            }
            i += 1;
            if self.state == ChunkState::Done {
                return Ok((i, None));
            }
        }
        Ok((i, None))
    }

    /// The state after byte `b` of the framing (sizes, extensions, CRLFs,
    /// trailers); chunk data is taken in runs by the caller.
    fn step(&mut self, b: u8) -> Result<ChunkState, &'static str> {
        Ok(match self.state {
            ChunkState::SizeStart => match hex(b) {
                Some(v) => ChunkState::Size { value: v, digits: 1 },
                None => return Err("chunk size is not hexadecimal"),
            },
            ChunkState::Size { value, digits } => self.size_step(value, digits, b)?,
            ChunkState::Ext => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err("chunk extension too long");
                }
                match b {
                    b'\r' => ChunkState::SizeLf { last: self.pending == 0 },
                    b'\n' | 0 => return Err("invalid byte in chunk extension"),
                    _ => ChunkState::Ext,
                }
            }
            ChunkState::SizeLf { last } => {
                if b != b'\n' {
                    return Err("chunk size line not ended by CRLF");
                }
                if last {
                    self.line_len = 0;
                    ChunkState::TrailerStart
                } else {
                    ChunkState::Data(self.pending)
                }
            }
            ChunkState::DataCr if b == b'\r' => ChunkState::DataLf,
            ChunkState::DataLf if b == b'\n' => ChunkState::SizeStart,
            ChunkState::DataCr | ChunkState::DataLf => return Err("chunk data not followed by CRLF"),
            ChunkState::TrailerStart | ChunkState::Trailer | ChunkState::TrailerLf { .. } => self.trailer_step(b)?,
            ChunkState::Data(_) | ChunkState::Done => self.state,
        })
    }

    /// A byte after the first digit of a chunk size.
    fn size_step(&mut self, value: u64, digits: u8, b: u8) -> Result<ChunkState, &'static str> {
        Ok(match (hex(b), b) {
            (Some(v), _) => {
                if digits >= 15 {
                    return Err("chunk size too large");
                }
                ChunkState::Size { value: value << 4 | v, digits: digits + 1 }
            }
            (None, b';') => {
                self.line_len = 0;
                self.pending = value;
                ChunkState::Ext
            }
            (None, b'\r') => {
                self.pending = value;
                ChunkState::SizeLf { last: value == 0 }
            }
            _ => return Err("invalid character after chunk size"),
        })
    }

    /// A byte of the trailer section (after the last chunk).
    fn trailer_step(&mut self, b: u8) -> Result<ChunkState, &'static str> {
        Ok(match self.state {
            ChunkState::TrailerStart => match b {
                b'\r' => ChunkState::TrailerLf { empty: true },
                _ => {
                    self.line_len = 1;
                    ChunkState::Trailer
                }
            },
            ChunkState::Trailer => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err("trailer line too long");
                }
                match b {
                    b'\r' => ChunkState::TrailerLf { empty: false },
                    b'\n' | 0 => return Err("invalid byte in trailer"),
                    _ => ChunkState::Trailer,
                }
            }
            ChunkState::TrailerLf { empty } => {
                if b != b'\n' {
                    return Err("trailer line not ended by CRLF");
                }
                if empty {
                    ChunkState::Done
                } else {
                    ChunkState::TrailerStart
                }
            }
            other => other,
        })
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Option<RequestHead>, RequestError> {
        let mut out = Vec::new();
        parse_request(raw.as_bytes(), 65536, 1 << 20, Some("metrics.agent.ddog-gov.com"), &mut out)
    }

    fn upstream_head(raw: &str) -> String {
        let mut out = Vec::new();
        parse_request(raw.as_bytes(), 65536, 1 << 20, Some("metrics.agent.ddog-gov.com"), &mut out).unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rewrites_host_and_drops_hop_by_hop() {
        let h = upstream_head(
            "POST /api/v2/series HTTP/1.1\r\nHost: 127.0.0.1:9804\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nDD-API-KEY: abc\r\nContent-Encoding: zstd\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        );
        assert_eq!(
            h,
            "POST /api/v2/series HTTP/1.1\r\nHost: metrics.agent.ddog-gov.com\r\nDD-API-KEY: abc\r\nContent-Encoding: zstd\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn framing_kinds() {
        let r = req("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::Length(10));
        let r = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::Chunked);
        let mut out = Vec::new();
        let r = parse_request(b"GET /api/v1/validate?x=1 HTTP/1.1\r\n\r\n", 65536, 1 << 20, None, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        assert_eq!(r.target(&out), b"/api/v1/validate?x=1");
        assert!(!r.close);
        let r = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(r.close && r.http10);
        let r = req("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::Length(4));
        assert!(req("POST / HTTP/1.1\r\nContent-Le").unwrap().is_none());
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let cases = [
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n", 400),
            ("POST / HTTP/1.1\nContent-Length: 3\n\n", 400),
            ("POST / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            ("POST http://evil/ HTTP/1.1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("POST / HTTP/2.0\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nExpect: something\r\n\r\n", 417),
            ("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
        ];
        for (raw, status) in cases {
            let e = req(raw).expect_err(raw);
            assert_eq!(e.status(), status, "{raw:?}: {e}");
        }
    }

    #[test]
    fn head_too_large_is_431() {
        let mut big = String::from("POST / HTTP/1.1\r\n");
        while big.len() < 70000 {
            big.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut out = Vec::new();
        let e = parse_request(big.as_bytes(), 65536, 1 << 20, None, &mut out).unwrap_err();
        assert_eq!(e.status(), 431);
    }

    fn scan_all(input: &[u8], step: usize) -> Result<(usize, u64, bool), &'static str> {
        let mut s = ChunkedScanner::new();
        let mut used = 0;
        while used < input.len() && !s.is_done() {
            let end = (used + step).min(input.len());
            used += s.scan(&input[used..end])?;
        }
        Ok((used, s.payload, s.is_done()))
    }

    #[test]
    fn chunked_scanner_finds_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (used, payload, done) = scan_all(body, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
            assert_eq!(payload, 11);
        }
        let (used, payload, done) = scan_all(b"0\r\n\r\n", 1).unwrap();
        assert_eq!((used, payload, done), (5, 0, true));
        let (_, _, done) = scan_all(b"A\r\n0123", 100).unwrap();
        assert!(!done);
    }

    #[test]
    fn chunked_scanner_rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"1000000000000000\r\n",
            b"5 \r\nhello\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"-5\r\n",
        ] {
            assert!(scan_all(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn response_framing_and_rewrite() {
        let mut out = Vec::new();
        let r = parse_response(
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n{}",
            65536,
            Method::Other,
            ClientConn::default(),
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.framing, BodyFraming::Length(2));
        assert!(!r.upstream_close);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n");

        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", 65536, Method::Other, ClientConn::default(), &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::UntilClose);
        assert!(String::from_utf8_lossy(&out).contains("Connection: close"));

        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            65536,
            Method::Head,
            ClientConn::default(),
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r =
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 65536, Method::Other, ClientConn::default(), &mut out)
                .unwrap()
                .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", 65536, Method::Other, ClientConn::default(), &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 100);
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            65536,
            Method::Other,
            ClientConn::default(),
            &mut out
        )
        .is_err());
    }

    fn answer(raw: &[u8], method: Method, client: ClientConn) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse_response(raw, 65536, method, client, &mut out).unwrap().unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn http10_persistence_comes_from_keep_alive() {
        let r = req("POST / HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.client(), ClientConn { http10: true, close: false });
        let r = req("POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.client(), ClientConn { http10: true, close: true });
        // `close` wins over `keep-alive`, in one field or two, in any order.
        for raw in [
            "POST / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            "POST / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
            "POST / HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
        ] {
            assert!(req(raw).unwrap().unwrap().close, "{raw:?}");
        }
        let mut out = Vec::new();
        let up = b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n";
        assert!(
            parse_response(up, 65536, Method::Other, ClientConn::default(), &mut out).unwrap().unwrap().upstream_close
        );
        let up = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(
            !parse_response(up, 65536, Method::Other, ClientConn::default(), &mut out).unwrap().unwrap().upstream_close
        );
        // RFC 9110 §10.1.1: the expectation of an HTTP/1.0 request is ignored.
        let r = req("POST / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.expect_continue);
        let r = req("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert!(r.expect_continue);
    }

    #[test]
    fn connection_field_for_each_client() {
        let keep10 = ClientConn { http10: true, close: false };
        let close10 = ClientConn { http10: true, close: true };
        let keep11 = ClientConn::default();
        let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}";
        let (h, text) = answer(ok, Method::Other, keep10);
        assert_eq!(text, "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!((h.client, h.dechunk), (keep10, false));
        let (h, text) = answer(ok, Method::Other, close10);
        assert_eq!(text, "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
        assert!(h.client.close);
        let (h, text) = answer(ok, Method::Other, keep11);
        assert_eq!(text, "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.client.close);
        // HEAD and 204: no body to delimit, the connection stays.
        let (h, text) = answer(ok, Method::Head, keep10);
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n") && !h.client.close, "{text}");
        let (h, text) = answer(b"HTTP/1.1 204 No Content\r\n\r\n", Method::Other, keep10);
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n") && !h.client.close, "{text}");

        let mut out = Vec::new();
        local_response(404, "no", keep10, &mut out);
        assert!(String::from_utf8_lossy(&out).contains("\r\nConnection: keep-alive\r\n\r\nno\n"));
        local_response(404, "no", keep11, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("Connection:"));
        for client in [ClientConn::CLOSE, close10] {
            local_response(502, "down", client, &mut out);
            assert!(String::from_utf8_lossy(&out).contains("\r\nConnection: close\r\n\r\ndown\n"));
        }
    }

    #[test]
    fn a_field_named_close_is_not_forwarded() {
        // Fuzz find: with the relay's own "Connection: close", a field named
        // "close" would turn connection-specific on the Agent's hop.
        let keep10 = ClientConn { http10: true, close: false };
        let (_, text) =
            answer(b"HTTP/1.1 202 Accepted\r\nclose: x\r\nContent-Length: 0\r\n\r\n", Method::Other, keep10);
        assert_eq!(text, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
    }

    #[test]
    fn answers_without_a_length_close_an_http10_client() {
        let keep10 = ClientConn { http10: true, close: false };
        // Close-delimited: the same for both versions.
        let (h, text) = answer(b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\nbody", Method::Other, keep10);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Type: x\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.client.close, h.dechunk), (BodyFraming::UntilClose, true, false));
        // Chunked: decoded for HTTP/1.0, no framing field left, close ends it.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-A: 1\r\n\r\n";
        let (h, text) = answer(chunked, Method::Other, keep10);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.client.close, h.dechunk), (BodyFraming::Chunked, true, true));
        // HTTP/1.1 keeps the chunked framing and the connection.
        let (h, text) = answer(chunked, Method::Other, ClientConn::default());
        assert!(text.contains("Transfer-Encoding: chunked\r\n") && !text.contains("Connection"), "{text}");
        assert_eq!((h.client.close, h.dechunk), (false, false));
        // HEAD: no body, but HTTP/1.0 never sees Transfer-Encoding.
        let (h, text) = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::Head, keep10);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(!h.dechunk && !h.client.close);
    }

    fn dechunk_all(input: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), &'static str> {
        let mut s = ChunkedScanner::new();
        let (mut used, mut payload) = (0, Vec::new());
        while used < input.len() && !s.is_done() {
            let end = (used + step).min(input.len());
            let mut piece = input[used..end].to_vec();
            let (n, decoded) = s.dechunk(&mut piece)?;
            payload.extend_from_slice(&piece[..decoded]);
            used += n;
        }
        Ok((used, payload, s.is_done()))
    }

    #[test]
    fn dechunk_gives_the_payload_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (used, payload, done) = dechunk_all(body, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
            assert_eq!(payload, b"hello world", "step {step}");
        }
        let mut whole = body.to_vec();
        let mut s = ChunkedScanner::new();
        assert_eq!(s.dechunk(&mut whole), Ok((body.len() - 4, 11)));
        assert_eq!(&whole[..11], b"hello world");
        assert_eq!(&whole[body.len() - 4..], b"NEXT", "bytes after the body are left alone");
        assert_eq!(s.payload, 11);
        assert!(dechunk_all(b"5\r\nhelloX\r\n", 100).is_err());
    }
}
