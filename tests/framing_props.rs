//! Property tests of request framing (`http1::parse_request` and
//! `http1::ChunkedScanner`): Agent-like requests round-trip to the exact
//! upstream head, any one injected framing ambiguity is refused with 400, and
//! a chunked body's end is found exactly whatever follows it and however the
//! bytes arrive. The fuzz targets in `fuzz/` check the same invariants over
//! arbitrary bytes; inputs they found are pinned at the end of this file.

use fipsrelay::http1::{parse_request, BodyFraming, ChunkedScanner, ClientConn, Method, RequestHead};
use proptest::prelude::*;
use proptest::sample::Index;

const UPSTREAM: &str = "metrics.agent.ddog-gov.com";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: u64 = 1 << 30;

const PATHS: &[&str] = &[
    "/api/v2/series",
    "/api/v1/series",
    "/api/beta/sketches",
    "/api/v1/check_run",
    "/intake/",
    "/api/v1/metadata",
    "/api/v2/logs",
    "/api/v0.2/traces",
    "/api/v2/profile",
    "/api/v1/validate",
    "/support/flare/12345",
];

/// Field names the relay treats specially; ordinary generated names avoid them.
const SPECIAL: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    // A Connection token this file sends, which also nominates a field of that name.
    "close",
];

/// Hop-by-hop fields an Agent or a proxy in front of it may send; never forwarded.
const HOP_BY_HOP: &[(&str, &str)] = &[
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Connection", "keep-alive"),
    ("Host", "127.0.0.1:9804"),
];

#[derive(Debug, Clone)]
enum Body {
    /// No framing field at all.
    Absent,
    Length(Vec<u8>),
    /// Chunk sizes, one extension for every chunk (may be empty), trailer fields.
    Chunked {
        chunks: Vec<usize>,
        ext: String,
        trailers: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    value: String,
    /// Expected upstream, byte for byte and in order.
    forwarded: bool,
}

#[derive(Debug, Clone)]
struct AgentRequest {
    method: &'static str,
    target: String,
    fields: Vec<Field>,
    body: Body,
    close: bool,
    expect_continue: bool,
}

impl AgentRequest {
    fn head(&self) -> Vec<u8> {
        let mut h = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for f in &self.fields {
            h.push_str(&format!("{}: {}\r\n", f.name, f.value));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn body(&self) -> Vec<u8> {
        match &self.body {
            Body::Absent => Vec::new(),
            Body::Length(b) => b.clone(),
            Body::Chunked { chunks, ext, trailers } => chunked_body(chunks, ext, trailers),
        }
    }

    fn payload_len(&self) -> u64 {
        match &self.body {
            Body::Absent => 0,
            Body::Length(b) => b.len() as u64,
            Body::Chunked { chunks, .. } => chunks.iter().sum::<usize>() as u64,
        }
    }

    /// The upstream head the relay must render: request line, the upstream
    /// Host, then the forwarded fields as received.
    fn expected_upstream(&self) -> Vec<u8> {
        let mut h = format!("{} {} HTTP/1.1\r\nHost: {UPSTREAM}\r\n", self.method, self.target);
        for f in self.fields.iter().filter(|f| f.forwarded) {
            h.push_str(&format!("{}: {}\r\n", f.name, f.value));
        }
        if self.method == "POST" && matches!(self.body, Body::Absent) {
            h.push_str("Content-Length: 0\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn framing(&self) -> BodyFraming {
        match &self.body {
            Body::Absent => BodyFraming::None,
            Body::Length(b) if b.is_empty() => BodyFraming::None,
            Body::Length(b) => BodyFraming::Length(b.len() as u64),
            Body::Chunked { .. } => BodyFraming::Chunked,
        }
    }
}

fn chunked_body(chunks: &[usize], ext: &str, trailers: &[(String, String)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, &n) in chunks.iter().enumerate() {
        b.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        b.extend((0..n).map(|j| b"0123456789abcdef\r\n"[(i + j) % 18]));
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("0{ext}\r\n").as_bytes());
    for (n, v) in trailers {
        b.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// Token names that are not special to the relay, in random case.
fn ordinary_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}"
        .prop_filter("special field name", |n| !SPECIAL.iter().any(|s| n.eq_ignore_ascii_case(s)))
}

/// Visible ASCII with inner spaces, no surrounding whitespace.
fn visible_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,40}[!-~])?"
}

fn extension() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "(;[a-z]{1,8}(=[a-z0-9]{1,8})?){1,3}", Just(";name=\"quoted value\"".to_string()),]
}

fn body(method: &'static str) -> BoxedStrategy<Body> {
    if method == "GET" {
        return Just(Body::Absent).boxed();
    }
    prop_oneof![
        1 => Just(Body::Absent),
        3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Body::Length),
        3 => (
            prop::collection::vec(1usize..200, 0..6),
            extension(),
            prop::collection::vec(("X-[A-Za-z]{1,10}", visible_value()), 0..3),
        )
            .prop_map(|(chunks, ext, trailers)| Body::Chunked { chunks, ext, trailers }),
    ]
    .boxed()
}

/// Spells a field name the way some client might: canonical, lower or upper case.
fn spell(name: &str, style: u8) -> String {
    match style % 3 {
        0 => name.to_string(),
        1 => name.to_ascii_lowercase(),
        _ => name.to_ascii_uppercase(),
    }
}

fn agent_request() -> impl Strategy<Value = AgentRequest> {
    let method = prop_oneof![3 => Just("POST"), 1 => Just("GET")];
    method.prop_flat_map(|method| {
        (
            prop::sample::select(PATHS),
            prop::option::of("[a-z_]{1,10}=[A-Za-z0-9._~-]{0,16}(&[a-z_]{1,10}=[A-Za-z0-9._~-]{0,16}){0,3}"),
            prop::collection::vec((ordinary_name(), visible_value()), 0..10),
            prop::sample::subsequence(HOP_BY_HOP, 0..=HOP_BY_HOP.len()),
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
            body(method),
            any::<u64>(),
        )
            .prop_map(move |(path, query, ordinary, hop, close, expect, style, body, seed)| {
                let target = match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                let mut fields: Vec<Field> =
                    ordinary.into_iter().map(|(name, value)| Field { name, value, forwarded: true }).collect();
                for (name, value) in hop {
                    let value = if name == "Connection" && close { "close" } else { value };
                    fields.push(Field { name: spell(name, style), value: value.to_string(), forwarded: false });
                }
                let expect_continue = expect && method == "POST";
                if expect_continue {
                    fields.push(Field { name: spell("Expect", style), value: "100-continue".into(), forwarded: false });
                }
                match &body {
                    Body::Absent => {}
                    Body::Length(b) => fields.push(Field {
                        name: spell("Content-Length", style),
                        value: b.len().to_string(),
                        forwarded: true,
                    }),
                    Body::Chunked { .. } => fields.push(Field {
                        name: spell("Transfer-Encoding", style),
                        value: "chunked".into(),
                        forwarded: true,
                    }),
                }
                shuffle(&mut fields, seed);
                let close = close && fields.iter().any(|f| f.name.eq_ignore_ascii_case("connection"));
                AgentRequest { method, target, fields, body, close, expect_continue }
            })
    })
}

/// A deterministic shuffle (so a failing case shrinks and replays).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn parse(input: &[u8], out: &mut Vec<u8>) -> Result<Option<RequestHead>, fipsrelay::http1::RequestError> {
    parse_request(input, MAX_HEAD, MAX_BODY, Some(UPSTREAM), out)
}

/// Scans `input` handed over in pieces that end at `cuts`, as the relay does.
fn scan_in_pieces(input: &[u8], cuts: &[Index]) -> Result<(usize, u64, bool), &'static str> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    ends.push(input.len());
    ends.sort_unstable();
    let mut s = ChunkedScanner::new();
    let mut used = 0;
    for end in ends {
        if s.is_done() {
            assert_eq!(s.scan(&input[used..end])?, 0, "scan after the end of the body consumed bytes");
            continue;
        }
        let n = s.scan(&input[used..end])?;
        assert!(n <= end - used);
        used += n;
    }
    Ok((used, s.payload, s.is_done()))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One framing ambiguity to inject into a valid request.
#[derive(Debug, Clone)]
enum Ambiguity {
    /// A second Content-Length with another value (the request uses one).
    SecondLength { at: Index, delta: u64 },
    /// Content-Length and Transfer-Encoding together.
    LengthAndChunked { at: Index },
    /// A Transfer-Encoding other than a single `chunked`.
    OtherEncoding { at: Index, value: &'static str },
    /// One line of the head ends with a bare LF.
    BareLf { line: Index },
    /// A space between a field name and its colon.
    SpaceBeforeColon { field: Index },
}

const OTHER_ENCODINGS: &[&str] = &[
    "xchunked",
    "chunkedx",
    "gzip",
    "identity",
    "gzip, chunked",
    "chunked, gzip",
    "chunked, chunked",
    "chunked;q=1",
    "\"chunked\"",
    "chunk",
    "deflate",
];

fn ambiguity() -> impl Strategy<Value = Ambiguity> {
    prop_oneof![
        (any::<Index>(), 1u64..1000).prop_map(|(at, delta)| Ambiguity::SecondLength { at, delta }),
        any::<Index>().prop_map(|at| Ambiguity::LengthAndChunked { at }),
        (any::<Index>(), prop::sample::select(OTHER_ENCODINGS))
            .prop_map(|(at, value)| Ambiguity::OtherEncoding { at, value }),
        any::<Index>().prop_map(|line| Ambiguity::BareLf { line }),
        any::<Index>().prop_map(|field| Ambiguity::SpaceBeforeColon { field }),
    ]
}

/// Applies `amb` to `req` and returns the bytes that must be refused.
fn inject(mut req: AgentRequest, amb: &Ambiguity) -> Vec<u8> {
    let field = |name: &str, value: String| Field { name: name.into(), value, forwarded: true };
    match amb {
        Ambiguity::SecondLength { at, delta } => {
            if !matches!(req.body, Body::Length(_)) {
                req.body = Body::Length(b"{}".to_vec());
                req.fields.retain(|f| !f.name.eq_ignore_ascii_case("transfer-encoding"));
                req.fields.push(field("Content-Length", "2".into()));
            }
            let other = req.payload_len() + delta;
            let i = at.index(req.fields.len() + 1);
            req.fields.insert(i, field("Content-Length", other.to_string()));
        }
        Ambiguity::LengthAndChunked { at } => {
            let i = at.index(req.fields.len() + 1);
            match req.body {
                Body::Chunked { .. } => {
                    let n = req.body().len();
                    req.fields.insert(i, field("Content-Length", n.to_string()))
                }
                Body::Length(_) => req.fields.insert(i, field("Transfer-Encoding", "chunked".into())),
                Body::Absent => {
                    req.fields.insert(i, field("Transfer-Encoding", "chunked".into()));
                    req.fields.insert(0, field("Content-Length", "5".into()));
                    req.body = Body::Chunked { chunks: Vec::new(), ext: String::new(), trailers: Vec::new() };
                }
            }
        }
        Ambiguity::OtherEncoding { at, value } => {
            req.fields.retain(|f| !f.name.eq_ignore_ascii_case("transfer-encoding"));
            let i = at.index(req.fields.len() + 1);
            req.fields.insert(i, field("Transfer-Encoding", value.to_string()));
        }
        Ambiguity::BareLf { .. } | Ambiguity::SpaceBeforeColon { .. } => {}
    }
    let mut head = req.head();
    match amb {
        Ambiguity::BareLf { line } => {
            // Every CRLF of the head, the blank line's included.
            let crlfs: Vec<usize> = (0..head.len() - 1).filter(|&i| &head[i..i + 2] == b"\r\n").collect();
            head.remove(crlfs[line.index(crlfs.len())]);
        }
        Ambiguity::SpaceBeforeColon { field } => {
            if req.fields.is_empty() {
                req.fields.push(Field { name: "X-A".into(), value: "1".into(), forwarded: true });
                head = req.head();
            }
            let f = &req.fields[field.index(req.fields.len())];
            let line = format!("\r\n{}: {}\r\n", f.name, f.value);
            let at = head.windows(line.len()).position(|w| w == line.as_bytes()).unwrap() + 2 + f.name.len();
            head.insert(at, b' ');
        }
        _ => {}
    }
    head.extend_from_slice(&req.body());
    head
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) A valid Agent-like request parses, and the upstream head is the
    /// expected one byte for byte: Host replaced, hop-by-hop fields and Expect
    /// dropped, every other field kept in order.
    #[test]
    fn agent_requests_round_trip(req in agent_request(), cuts in prop::collection::vec(any::<Index>(), 0..4)) {
        let head = req.head();
        let body = req.body();
        let mut wire = head.clone();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n"); // a pipelined request after it

        let mut out = Vec::new();
        let parsed = parse(&wire, &mut out);
        let parsed = match parsed {
            Ok(Some(p)) => p,
            other => panic!("refused {:?}: {other:?}", lossy(&head)),
        };
        prop_assert_eq!(parsed.head_len, head.len());
        prop_assert_eq!(parsed.framing, req.framing());
        prop_assert_eq!(parsed.method, if req.method == "GET" { Method::Get } else { Method::Other });
        prop_assert_eq!(parsed.target(&out), req.target.as_bytes());
        prop_assert_eq!(parsed.expect_continue, req.expect_continue);
        prop_assert_eq!(parsed.close, req.close);
        prop_assert!(!parsed.http10);
        prop_assert_eq!(lossy(&out), lossy(&req.expected_upstream()));

        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut up = httparse::Request::new(&mut hs);
        prop_assert_eq!(up.parse(&out).ok(), Some(httparse::Status::Complete(out.len())));
        prop_assert_eq!(up.path, Some(req.target.as_str()));

        // Any prefix of the head needs more bytes; it is never refused.
        for c in &cuts {
            let cut = c.index(head.len());
            prop_assert!(matches!(parse(&wire[..cut], &mut out), Ok(None)), "prefix of {} bytes", cut);
        }

        if let Body::Chunked { .. } = req.body {
            let rest = &wire[head.len()..];
            let (used, payload, done) = scan_in_pieces(rest, &cuts).map_err(TestCaseError::fail)?;
            prop_assert!(done);
            prop_assert_eq!(used, body.len());
            prop_assert_eq!(payload, req.payload_len());
        }
    }

    /// (b) The same requests with one framing ambiguity injected are refused
    /// with 400 before anything is forwarded.
    #[test]
    fn one_ambiguity_is_refused_with_400(req in agent_request(), amb in ambiguity()) {
        let mut req = req;
        if req.method == "GET" {
            req.method = "POST";
        }
        let wire = inject(req, &amb);
        let mut out = Vec::new();
        match parse(&wire, &mut out) {
            Err(e) => prop_assert_eq!(e.status(), 400, "{:?} gave {}", lossy(&wire), e),
            Ok(r) => panic!("{amb:?} accepted: {:?} -> {r:?}\nupstream {:?}", lossy(&wire), lossy(&out)),
        }
    }

    /// (c) Whatever follows a chunked body (the next pipelined request, or
    /// junk), the scanner stops exactly at the body's end.
    #[test]
    fn chunked_scanner_stops_at_the_end(
        chunks in prop::collection::vec(0usize..300, 0..8),
        ext in extension(),
        trailers in prop::collection::vec(("X-[A-Za-z]{1,10}", visible_value()), 0..3),
        after in prop::collection::vec(any::<u8>(), 0..128),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        // A zero-size chunk would end the body early; it is the last chunk only.
        let chunks: Vec<usize> = chunks.into_iter().filter(|&n| n > 0).collect();
        let body = chunked_body(&chunks, &ext, &trailers);
        let mut input = body.clone();
        input.extend_from_slice(&after);
        let (used, payload, done) = scan_in_pieces(&input, &cuts).map_err(TestCaseError::fail)?;
        prop_assert!(done);
        prop_assert_eq!(used, body.len());
        prop_assert_eq!(payload, chunks.iter().sum::<usize>() as u64);
    }
}

// Inputs the fuzz targets found (fuzz/README.md, "Findings"; the minimized
// files are in fuzz/artifacts-kept/). Each is ignored until src/http1.rs is
// fixed; run them with `cargo test --test framing_props -- --ignored`.

fn upstream_fields(out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut up = httparse::Request::new(&mut hs);
    assert!(matches!(up.parse(out), Ok(httparse::Status::Complete(_))), "{:?}", lossy(out));
    up.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect()
}

/// F1: `Connection: Content-Length` (or `Transfer-Encoding`) makes the relay
/// drop the framing field from the upstream head while it still forwards the
/// body, so the intake reads the body as the next request on the pooled
/// session (request smuggling / response desync). Either refuse (400) or keep
/// the framing field.
#[test]
fn regression_f1_connection_cannot_remove_request_framing() {
    let cases: [(&[u8], &str, &[u8]); 2] = [
        (
            b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
            "content-length",
            b"5",
        ),
        (
            b"POST /api/v2/logs HTTP/1.1\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "transfer-encoding",
            b"chunked",
        ),
    ];
    for (raw, name, value) in cases {
        let mut out = Vec::new();
        match parse(raw, &mut out) {
            Err(e) => assert_eq!(e.status(), 400, "{:?}: {e}", lossy(raw)),
            Ok(Some(head)) => {
                assert_ne!(head.framing, BodyFraming::None);
                let fields = upstream_fields(&out);
                assert!(
                    fields.iter().any(|(n, v)| n == name && v == value),
                    "relay forwards a {:?} body but the upstream head has no {name}:\n{}",
                    head.framing,
                    lossy(&out)
                );
            }
            Ok(None) => panic!("complete head reported partial"),
        }
    }
}

/// F2: the same in the answer: `Connection: content-length` from the intake
/// drops Content-Length from the head the Agent gets, while the relay still
/// frames the body by that length and keeps the connection open, so the Agent
/// waits for a close that never comes. The Agent must frame the body as the
/// relay does.
#[test]
fn regression_f2_connection_cannot_remove_answer_framing() {
    use fipsrelay::http1::parse_response;
    for raw in [
        &b"HTTP/1.1 202 Accepted\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n{}"[..],
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut out = Vec::new();
        let Ok(Some(head)) = parse_response(raw, MAX_HEAD, Method::Other, ClientConn::default(), &mut out) else {
            continue; // refusing the answer (502) is fine too
        };
        let mut again = Vec::new();
        let agent_view =
            parse_response(&out, MAX_HEAD, Method::Other, ClientConn::default(), &mut again).unwrap().unwrap();
        assert_eq!(agent_view.framing, head.framing, "Agent gets:\n{}", lossy(&out));
    }
}

/// F3: `parse_response` checks `max_head` only while the head is incomplete;
/// a head that completes in the read that crosses the limit is accepted.
#[test]
fn regression_f3_answer_head_limit_applies_to_complete_heads() {
    use fipsrelay::http1::parse_response;
    let raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}";
    let mut out = Vec::new();
    let r = parse_response(raw, 16, Method::Other, ClientConn::default(), &mut out);
    assert!(r.is_err(), "a {}-byte head accepted under a 16-byte limit: {r:?}", raw.len() - 2);
}

/// F4: a status below 100 (`099`) is rendered with fewer than three digits
/// (`HTTP/1.1 99 Odd`), a status line the Agent cannot parse.
#[test]
fn regression_f4_answer_status_line_stays_parseable() {
    use fipsrelay::http1::parse_response;
    let raw = b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n";
    let mut out = Vec::new();
    if let Ok(Some(_)) = parse_response(raw, MAX_HEAD, Method::Other, ClientConn::default(), &mut out) {
        let mut hs = [httparse::EMPTY_HEADER; 8];
        let r = httparse::Response::new(&mut hs).parse(&out);
        assert!(matches!(r, Ok(httparse::Status::Complete(_))), "{r:?}: {:?}", lossy(&out));
    }
}

/// F5 (2026-12-01): an answer field named `close` was forwarded next to the
/// relay's own `Connection: close`, which makes it connection-specific on
/// the Agent's hop; rendering the head again then dropped it (no fixed
/// point). Minimized: `fuzz/artifacts-kept/response/f5-answer-field-named-close`.
#[test]
fn regression_f5_answer_field_named_close_is_dropped() {
    use fipsrelay::http1::parse_response;
    let raw =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/artifacts-kept/response/f5-answer-field-named-close"))
            .unwrap();
    for client in [ClientConn::default(), ClientConn::CLOSE, ClientConn { http10: true, close: false }] {
        let mut out = Vec::new();
        if let Ok(Some(h)) = parse_response(&raw, MAX_HEAD, Method::Other, client, &mut out) {
            let mut again = Vec::new();
            let h2 = parse_response(&out, MAX_HEAD, Method::Other, client, &mut again).unwrap().unwrap();
            assert_eq!(h2.status, h.status);
            assert_eq!(again, out, "not a fixed point: {:?}", lossy(&out));
            assert!(!lossy(&out).to_ascii_lowercase().contains("\r\nclose:"), "{:?}", lossy(&out));
        }
    }
}
