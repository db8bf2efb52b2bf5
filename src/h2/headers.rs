//! Header translation between the Agent's HTTP/1.1 and HTTP/2 to the
//! intake (RFC 9113 §8), through HPACK ([`super::hpack`]).
//!
//! Requests start from the upstream head that [`crate::http1::parse_request`]
//! already rendered and checked (request line, `Host`, the end-to-end fields
//! as received; hop-by-hop fields and `Expect` gone). Its request line and
//! `Host` become the pseudo-fields; every other field goes on byte for byte
//! with its name lowercased, except `Transfer-Encoding`, whose framing DATA
//! frames replace (§8.2.2). `Content-Encoding` is never touched.
//!
//! Answers go the other way: the intake's field list is checked and kept as
//! an [`AnswerHead`] (status and fields), which the relay hands to
//! [`crate::http1::render_answer`] like the fields of an answer from an
//! HTTP/1.1 intake, so the rules for what the Agent is told (framing,
//! `Connection`, HTTP/1.0 clients) live in one place. An answer without
//! `content-length` whose body follows is announced chunked; the exchange
//! then writes its DATA in chunks.
//!
//! Must never: forward a connection-specific field in either direction, or
//! accept an answer block that breaks §8.3 (pseudo-fields after regular
//! ones, unknown or repeated pseudo-fields, uppercase names).

use thiserror::Error;

/// Fields that are connection-specific in HTTP/1.1 and must not appear in
/// HTTP/2 (RFC 9113 §8.2.2). `te` is allowed with the value `trailers` only.
const CONNECTION_SPECIFIC: [&[u8]; 6] =
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"];

/// An answer head as HTTP/2 gave it: the status and the regular fields, in
/// order, in one buffer (reused: no allocation per answer once grown).
#[derive(Debug, Default)]
pub struct AnswerHead {
    pub status: u16,
    bytes: Vec<u8>,
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl AnswerHead {
    /// The fields, `(name, value)`, in the order the intake sent them.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.fields.iter().map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }

    pub fn clear(&mut self) {
        self.status = 0;
        self.bytes.clear();
        self.fields.clear();
    }

    /// Becomes a copy of `other`, in the buffers it already has.
    pub fn copy_from(&mut self, other: &AnswerHead) {
        self.status = other.status;
        self.bytes.clear();
        self.bytes.extend_from_slice(&other.bytes);
        self.fields.clear();
        self.fields.extend_from_slice(&other.fields);
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let n = self.bytes.len()..self.bytes.len() + name.len();
        self.bytes.extend_from_slice(name);
        let v = self.bytes.len()..self.bytes.len() + value.len();
        self.bytes.extend_from_slice(value);
        self.fields.push((n, v));
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the rendered request head does not parse: {0}")]
    Request(&'static str),
    #[error("the intake's header block does not decode (HPACK): {0}")]
    Hpack(String),
    #[error("the intake's header list is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the intake's answer head is malformed: {0}")]
    Malformed(&'static str),
}

/// Encodes the HTTP/2 header block for `rendered` (an upstream HTTP/1.1
/// head from `parse_request`) into `out` (appended).
pub fn encode_request(
    rendered: &[u8],
    encoder: &mut super::hpack::Encoder,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), HeaderError> {
    // The head is this relay's own rendering (one space after the colon, no
    // CR or LF in a value, all checked by `parse_request`): split, not parsed.
    let mut lines = Lines(rendered);
    let bad = HeaderError::Request("incomplete or invalid");
    let request_line = lines.next().ok_or(HeaderError::Request("incomplete or invalid"))?;
    let (method, rest) = split_at_byte(request_line, b' ').ok_or(HeaderError::Request("no method"))?;
    let space = rest.iter().rposition(|&b| b == b' ').ok_or(HeaderError::Request("no target"))?;
    let path = &rest[..space];
    let fields = lines.clone();
    let mut authority = None;
    let mut ended = false;
    for line in lines.by_ref() {
        if line.is_empty() {
            ended = true;
            break;
        }
        let (name, value) = field(line).ok_or(HeaderError::Request("incomplete or invalid"))?;
        if authority.is_none() && name.eq_ignore_ascii_case(b"host") {
            authority = Some(value);
        }
    }
    if !ended {
        return Err(bad);
    }
    let authority = authority.ok_or(HeaderError::Request("no Host"))?;
    let pseudo = [(&b":method"[..], method), (b":scheme", b"https"), (b":authority", authority), (b":path", path)];
    encoder.encode(pseudo, out);
    // Each name lowercased in `scratch` (reused: no allocation per request).
    for line in fields {
        let Some((name, value)) = field(line) else { break };
        if CONNECTION_SPECIFIC.iter().any(|c| name.eq_ignore_ascii_case(c)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"te") && !value.eq_ignore_ascii_case(b"trailers") {
            continue;
        }
        scratch.clear();
        scratch.extend(name.iter().map(u8::to_ascii_lowercase));
        encoder.encode([(&scratch[..], value)], out);
    }
    Ok(())
}

/// The CRLF-ended lines of a rendered head.
#[derive(Clone)]
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let k = self.0.iter().position(|&b| b == b'\r')?;
        if self.0.get(k + 1) != Some(&b'\n') {
            return None;
        }
        let line = &self.0[..k];
        self.0 = &self.0[k + 2..];
        Some(line)
    }
}

/// `Name: value` as rendered; `None` for the empty line or a malformed one.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, value) = split_at_byte(line, b':')?;
    if name.is_empty() {
        return None;
    }
    Some((name, value.strip_prefix(b" ").unwrap_or(value)))
}

fn split_at_byte(s: &[u8], b: u8) -> Option<(&[u8], &[u8])> {
    let k = s.iter().position(|&c| c == b)?;
    Some((&s[..k], &s[k + 1..]))
}

/// Decodes the intake's answer header block into `out` (cleared first),
/// for [`crate::http1::render_answer`]. `end_stream`: the HEADERS frame
/// ended the stream (no body follows). Returns the status. Informational
/// (1xx) heads are kept too; the caller skips them as it does for HTTP/1.1. `max_list` bounds the decoded list (names + values +
/// 32 bytes a field, as SETTINGS_MAX_HEADER_LIST_SIZE counts).
pub fn decode_answer(
    block: &[u8],
    decoder: &mut super::hpack::Decoder,
    end_stream: bool,
    max_list: usize,
    out: &mut AnswerHead,
) -> Result<u16, HeaderError> {
    out.clear();
    let mut status: Option<u16> = None;
    let mut regular = false;
    let mut list = 0usize;
    let mut has_length = false;
    let mut bad: Option<HeaderError> = None;
    let res = decoder.decode(block, |name, value| {
        if bad.is_some() {
            return;
        }
        list += name.len() + value.len() + 32;
        if list > max_list {
            bad = Some(HeaderError::TooLarge(max_list));
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular {
                bad = Some(HeaderError::Malformed("a pseudo-field after a regular field"));
            } else if pseudo != b"status" {
                bad = Some(HeaderError::Malformed("a pseudo-field other than :status in an answer"));
            } else if status.is_some() {
                bad = Some(HeaderError::Malformed("a repeated :status"));
            } else {
                status = parse_status(value);
                if status.is_none() {
                    bad = Some(HeaderError::Malformed(":status is not three digits"));
                }
            }
            return;
        }
        regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            bad = Some(HeaderError::Malformed("an uppercase field name"));
            return;
        }
        if CONNECTION_SPECIFIC.contains(&name) || (name == b"te" && value != b"trailers") {
            bad = Some(HeaderError::Malformed("a connection-specific field"));
            return;
        }
        if name.iter().chain(value.iter()).any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            bad = Some(HeaderError::Malformed("CR, LF or NUL in a field"));
            return;
        }
        has_length |= name == b"content-length";
        out.push(name, value);
    });
    if let Err(e) = res {
        return Err(HeaderError::Hpack(e.to_string()));
    }
    if let Some(e) = bad {
        return Err(e);
    }
    let status = status.ok_or(HeaderError::Malformed("no :status"))?;
    out.status = status;
    // The framing HTTP/1.1 needs where HTTP/2 has none: no body, or the
    // DATA frames, sent on as chunks.
    if !(100..200).contains(&status) && !has_length {
        if end_stream {
            out.push(b"content-length", b"0");
        } else {
            out.push(b"transfer-encoding", b"chunked");
        }
    }
    Ok(status)
}

fn parse_status(v: &[u8]) -> Option<u16> {
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u16, |n, d| n * 10 + (d - b'0') as u16);
    (100..=999).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, BodyFraming, ClientConn, Method};

    fn decode_all(block: &[u8]) -> Vec<(String, String)> {
        let mut d = loona_hpack::Decoder::new();
        d.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn rendered(agent: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        parse_request(agent, 16 * 1024, 1 << 30, Some("metrics.agent.ddog-gov.com"), &mut out).unwrap().unwrap();
        out
    }

    #[test]
    fn an_agent_request_becomes_pseudo_fields_and_its_end_to_end_fields() {
        let head = rendered(
            b"POST /api/v2/series?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9804\r\nDD-API-KEY: secret\r\nContent-Type: application/json\r\nContent-Encoding: zstd\r\nContent-Length: 5\r\nConnection: keep-alive, X-Drop\r\nX-Drop: gone\r\nKeep-Alive: 5\r\nTE: gzip\r\nUser-Agent: datadog-agent/7\r\n\r\n",
        );
        let mut enc = crate::h2::hpack::Encoder::new();
        let mut block = Vec::new();
        encode_request(&head, &mut enc, &mut Vec::new(), &mut block).unwrap();
        let fields = decode_all(&block);
        let f: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            f,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "metrics.agent.ddog-gov.com"),
                (":path", "/api/v2/series?x=1"),
                ("dd-api-key", "secret"),
                ("content-type", "application/json"),
                ("content-encoding", "zstd"),
                ("content-length", "5"),
                ("user-agent", "datadog-agent/7"),
            ]
        );
    }

    #[test]
    fn a_chunked_request_loses_transfer_encoding_and_te_trailers_stays() {
        let head = rendered(b"POST /api/v2/logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut enc = crate::h2::hpack::Encoder::new();
        let mut block = Vec::new();
        encode_request(&head, &mut enc, &mut Vec::new(), &mut block).unwrap();
        assert!(decode_all(&block).iter().all(|(n, _)| n != "transfer-encoding"));
        // `te: trailers` passes (the relay's HTTP/1.1 rendering drops TE as
        // hop-by-hop, so this starts from a hand-written rendered head).
        let mut enc = crate::h2::hpack::Encoder::new();
        let mut block = Vec::new();
        encode_request(b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n", &mut enc, &mut Vec::new(), &mut block)
            .unwrap();
        assert!(decode_all(&block).contains(&("te".into(), "trailers".into())));
    }

    #[test]
    fn a_head_that_is_not_a_whole_rendering_is_refused() {
        let mut enc = crate::h2::hpack::Encoder::new();
        for (head, why) in [
            (&b"GET / HTTP/1.1\r\nHost: h\r\n"[..], "incomplete or invalid"),
            (b"GET / HTTP/1.1\r\nHost h\r\n\r\n", "incomplete or invalid"),
            (b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", "no Host"),
            (b"GET\r\nHost: h\r\n\r\n", "no method"),
            (b"", "incomplete or invalid"),
        ] {
            let e = encode_request(head, &mut enc, &mut Vec::new(), &mut Vec::new()).unwrap_err();
            assert_eq!(e, HeaderError::Request(why), "{:?}", String::from_utf8_lossy(head));
        }
        // A value keeps its bytes (inner spaces, a colon) as rendered.
        let mut block = Vec::new();
        encode_request(b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-Y: a: b  c\r\n\r\n", &mut enc, &mut Vec::new(), &mut block)
            .unwrap();
        let mut d = loona_hpack::Decoder::new();
        let f = d.decode(&block).unwrap();
        assert_eq!(f[3], (b":path".to_vec(), b"/a?b".to_vec()));
        assert_eq!(f[4], (b"x-y".to_vec(), b"a: b  c".to_vec()));
    }

    #[test]
    fn the_encoder_indexes_what_repeats() {
        let head = rendered(b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nDD-API-KEY: k\r\nContent-Length: 1\r\n\r\n");
        let mut enc = crate::h2::hpack::Encoder::new();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        encode_request(&head, &mut enc, &mut Vec::new(), &mut first).unwrap();
        encode_request(&head, &mut enc, &mut Vec::new(), &mut second).unwrap();
        // The second block: indexes, then the key (never indexed) and the
        // length (not indexed) as literals.
        assert!(second.len() <= 24, "{} then {} bytes", first.len(), second.len());
        let mut d = loona_hpack::Decoder::new();
        assert_eq!(d.decode(&first).unwrap(), d.decode(&second).unwrap());
    }

    fn answer_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn answer(fields: &[(&str, &str)], end_stream: bool) -> Result<(u16, AnswerHead), HeaderError> {
        let mut d = crate::h2::hpack::Decoder::new();
        let mut out = AnswerHead::default();
        decode_answer(&answer_block(fields), &mut d, end_stream, 16 * 1024, &mut out).map(|s| (s, out))
    }

    fn render(h: &AnswerHead, out: &mut Vec<u8>) -> crate::http1::ResponseHead {
        crate::http1::render_answer(
            h.status,
            crate::http1::reason(h.status).as_bytes(),
            false,
            0,
            h.fields(),
            Method::Other,
            ClientConn::default(),
            out,
        )
        .unwrap()
    }

    #[test]
    fn an_answer_becomes_the_head_an_http1_answer_would_give() {
        let (status, h) =
            answer(&[(":status", "202"), ("content-type", "application/json"), ("content-length", "2")], false)
                .unwrap();
        assert_eq!(status, 202);
        let mut out = Vec::new();
        let head = render(&h, &mut out);
        assert_eq!((head.status, head.framing), (202, BodyFraming::Length(2)));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
        );
        // No length: chunked if a body follows, empty if HEADERS ended the stream.
        let (_, h) = answer(&[(":status", "200")], false).unwrap();
        assert_eq!(render(&h, &mut out).framing, BodyFraming::Chunked);
        let (_, h) = answer(&[(":status", "503")], true).unwrap();
        assert_eq!(render(&h, &mut out).framing, BodyFraming::Length(0));
        // A reused head holds only the last answer.
        let mut again = AnswerHead::default();
        again.copy_from(&h);
        assert_eq!(again.fields().count(), 1);
        again.copy_from(&answer(&[(":status", "204")], true).unwrap().1);
        assert_eq!((again.status, again.fields().count()), (204, 1));
        // An interim answer stays interim.
        let (status, _) = answer(&[(":status", "100")], false).unwrap();
        assert_eq!(status, 100);
    }

    #[test]
    fn malformed_answer_blocks_are_refused() {
        let bad = |fields: &[(&str, &str)]| answer(fields, true).unwrap_err();
        assert!(matches!(bad(&[("content-type", "x")]), HeaderError::Malformed("no :status")));
        assert!(matches!(bad(&[("a", "b"), (":status", "200")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "200"), (":status", "200")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":path", "/"), (":status", "200")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "20")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "200"), ("connection", "close")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "200"), ("transfer-encoding", "chunked")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "200"), ("X-Up", "1")]), HeaderError::Malformed(_)));
        assert!(matches!(bad(&[(":status", "200"), ("x", "a\r\nInjected: 1")]), HeaderError::Malformed(_)));
        // A list over the bound.
        let long = "v".repeat(20_000);
        assert_eq!(bad(&[(":status", "200"), ("x", &long)]), HeaderError::TooLarge(16 * 1024));
        // Bytes that are not HPACK.
        let mut d = crate::h2::hpack::Decoder::new();
        assert!(matches!(
            decode_answer(&[0xff, 0xff, 0xff], &mut d, true, 1024, &mut AnswerHead::default()),
            Err(HeaderError::Hpack(_))
        ));
    }
}
