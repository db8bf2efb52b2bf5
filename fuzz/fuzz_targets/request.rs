//! Request head parsing, framing validation and upstream head rendering
//! (`http1::parse_request`), checked against invariants, not only for panics.
#![no_main]

use fipsrelay::http1::{parse_request, BodyFraming, Method, RequestError, RequestHead, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::*;

const HOST: &str = "metrics.agent.ddog-gov.com";
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: u64 = 5 << 20;

type Parsed = Result<Option<RequestHead>, RequestError>;

fn parse(data: &[u8], max_head: usize, out: &mut Vec<u8>) -> Parsed {
    parse_request(data, max_head, MAX_BODY, Some(HOST), out)
}

fn same_head(a: &RequestHead, b: &RequestHead) -> bool {
    a.head_len == b.head_len
        && a.method == b.method
        && a.target_range == b.target_range
        && a.framing == b.framing
        && a.expect_continue == b.expect_continue
        && a.close == b.close
        && a.http10 == b.http10
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let full = parse(data, MAX_HEAD, &mut out);
    if let Ok(Some(head)) = &full {
        check_accepted(data, head, &out);
    }

    // Split delivery: a prefix either needs more bytes, or gives exactly the
    // answer the whole input gives (same error class, same head, same bytes).
    let mut out_prefix = Vec::new();
    for cut in split_points(data) {
        let prefix = parse(&data[..cut], MAX_HEAD, &mut out_prefix);
        match (&prefix, &full) {
            (Ok(None), _) => {}
            (Ok(Some(p)), Ok(Some(f))) => {
                assert!(same_head(p, f), "prefix {cut} gave {p:?}, whole input {f:?}");
                assert_eq!(out_prefix, out, "prefix {cut} rendered a different upstream head");
            }
            (Err(_), Err(_)) => {}
            _ => panic!("prefix of {cut} bytes gave {prefix:?}, whole input {full:?}"),
        }
    }

    // A smaller head limit is honoured.
    if data.len() > 1 {
        let small = data.len() / 2;
        if let Ok(Some(head)) = parse(data, small, &mut out_prefix) {
            assert!(head.head_len <= small, "head of {} bytes accepted under a limit of {small}", head.head_len);
        }
    }
});

fn check_accepted(data: &[u8], head: &RequestHead, out: &[u8]) {
    assert!(head.head_len <= data.len() && head.head_len <= MAX_HEAD, "head_len {} out of range", head.head_len);

    // The original head, as httparse sees it.
    let mut oh = [httparse::EMPTY_HEADER; 256];
    let mut orig = httparse::Request::new(&mut oh);
    assert_eq!(orig.parse(data).ok(), Some(httparse::Status::Complete(head.head_len)));

    // The upstream head is one complete, well-formed request and nothing else.
    let mut rh = [httparse::EMPTY_HEADER; 256];
    let mut up = httparse::Request::new(&mut rh);
    match up.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the rendered head"),
        other => panic!("rendered head does not parse: {other:?}\n{}", String::from_utf8_lossy(out)),
    }
    assert_eq!(up.method, orig.method);
    assert_eq!(up.version, Some(1));

    // Target: the slice the head points at is the received origin-form target,
    // and it sits exactly between "METHOD " and " HTTP/1.1\r\n".
    let target = head.target(out);
    assert!(target.starts_with(b"/"), "target {:?}", String::from_utf8_lossy(target));
    assert_eq!(Some(target), up.path.map(str::as_bytes));
    assert_eq!(Some(target), orig.path.map(str::as_bytes));
    let r = head.target_range.clone();
    assert_eq!(&out[..r.start], format!("{} ", up.method.unwrap()).as_bytes());
    assert!(out[r.end..].starts_with(b" HTTP/1.1\r\n"));

    let f = fields(up.headers);
    let host: Vec<_> = f.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host")).collect();
    assert_eq!(host.len(), 1, "Host fields upstream: {host:?}");
    assert_eq!(host[0].1, HOST.as_bytes());
    for name in HOP_BY_HOP.iter().chain(&["expect"]) {
        assert_eq!(count(&f, name), 0, "{name} forwarded upstream:\n{}", String::from_utf8_lossy(out));
    }
    let cl = count(&f, "content-length");
    let te = count(&f, "transfer-encoding");
    assert!(cl == 0 || te == 0, "both Content-Length and Transfer-Encoding upstream");
    assert!(cl <= 1, "{cl} Content-Length fields upstream");

    // The upstream must frame the body exactly as the relay will send it.
    let lengths: Vec<_> =
        f.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| length_value(v)).collect();
    match head.framing {
        BodyFraming::Length(n) => {
            assert_eq!(lengths, [Some(n)], "relay sends {n} body bytes; upstream head says otherwise:\n{}", lossy(out))
        }
        BodyFraming::Chunked => {
            assert_eq!(te, 1, "relay sends a chunked body; upstream head has no Transfer-Encoding:\n{}", lossy(out))
        }
        BodyFraming::None => {
            assert_eq!(te, 0);
            assert!(lengths.iter().all(|l| *l == Some(0)), "no body sent, upstream head says {lengths:?}");
            if head.method == Method::Other {
                assert_eq!(lengths, [Some(0)], "bodyless {:?} needs Content-Length: 0 upstream", up.method);
            }
        }
        BodyFraming::UntilClose => panic!("a request is never delimited by close"),
    }

    // Rendering is a fixed point: the upstream head parses to the same framing
    // and renders to itself, so relay and intake agree on the message.
    let mut again = Vec::new();
    // (Skipped when adding Host took the head past the relay's own field limit.)
    if up.headers.len() > MAX_HEADERS {
        return;
    }
    match parse_request(out, 1 << 20, MAX_BODY, Some(HOST), &mut again) {
        Ok(Some(h2)) => {
            assert_eq!(h2.head_len, out.len());
            assert_eq!(h2.framing, head.framing);
            assert_eq!(h2.target(&again), target);
            assert_eq!(again, out, "rendering the upstream head again changed it");
        }
        other => panic!("rendered head refused by parse_request: {other:?}\n{}", lossy(out)),
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}
