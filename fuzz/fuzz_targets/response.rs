//! Answer head parsing and rendering for the Agent (`http1::parse_response`),
//! checked against invariants, not only for panics.
#![no_main]

use fipsrelay::http1::{parse_response, BodyFraming, ClientConn, Method, ResponseError, ResponseHead, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::*;

const MAX_HEAD: usize = 16 * 1024;
/// F3 in fuzz/README.md: a complete answer head is not checked against max_head.
const KNOWN_F3_HEAD_LIMIT_UNCHECKED: bool = false;
/// F4 in fuzz/README.md: a status below 100 is rendered with fewer than three
/// digits. It is hit within seconds and would stop every run, so such answers
/// skip the rendering checks; flip the constant once it is fixed.
const KNOWN_F4_STATUS_BELOW_100: bool = false;

fn parse(
    data: &[u8],
    method: Method,
    client: ClientConn,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ResponseError> {
    parse_response(data, MAX_HEAD, method, client, out)
}

fuzz_target!(|data: &[u8]| {
    // The request method, the client's close wish and its HTTP version come
    // from the input's length so that seeds stay plain HTTP answers.
    let method = [Method::Other, Method::Get, Method::Head][data.len() % 3];
    let client = ClientConn { close: data.len() % 5 == 0, http10: data.len() % 7 == 0 };
    let mut out = Vec::new();
    let full = parse(data, method, client, &mut out);
    if let Ok(Some(head)) = &full {
        check_accepted(data, head, method, client, &out);
    }

    let mut out_prefix = Vec::new();
    for cut in split_points(data) {
        let prefix = parse(&data[..cut], method, client, &mut out_prefix);
        match (&prefix, &full) {
            (Ok(None), _) => {}
            (Ok(Some(p)), Ok(Some(f))) => {
                assert_eq!(
                    (p.head_len, p.status, p.framing, p.upstream_close, p.client, p.dechunk),
                    (f.head_len, f.status, f.framing, f.upstream_close, f.client, f.dechunk)
                );
                if !(100..200).contains(&f.status) {
                    assert_eq!(out_prefix, out, "prefix {cut} rendered a different head");
                }
            }
            (Err(_), Err(_)) => {}
            _ => panic!("prefix of {cut} bytes gave {prefix:?}, whole input {full:?}"),
        }
    }

    // A smaller head limit is honoured. Known finding (fuzz/README.md, F3):
    // parse_response checks max_head only while the head is incomplete, so
    // this fails on almost every input; flip the constant once it is fixed.
    if !KNOWN_F3_HEAD_LIMIT_UNCHECKED && data.len() > 1 {
        let small = data.len() / 2;
        if let Ok(Some(head)) = parse_response(data, small, method, client, &mut out_prefix) {
            assert!(head.head_len <= small, "head of {} bytes accepted under a limit of {small}", head.head_len);
        }
    }
});

fn check_accepted(data: &[u8], head: &ResponseHead, method: Method, client: ClientConn, out: &[u8]) {
    assert!(head.head_len <= data.len() && head.head_len <= MAX_HEAD);
    if KNOWN_F4_STATUS_BELOW_100 && head.status < 100 {
        return;
    }
    if (100..200).contains(&head.status) {
        assert_eq!(head.framing, BodyFraming::None);
        return; // skipped by the caller, never rendered
    }
    let mut rh = [httparse::EMPTY_HEADER; 256];
    let mut agent = httparse::Response::new(&mut rh);
    match agent.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the rendered head"),
        other => panic!("rendered head does not parse: {other:?}\n{}", String::from_utf8_lossy(out)),
    }
    assert_eq!(agent.code, Some(head.status), "status changed");
    let f = fields(agent.headers);
    for name in HOP_BY_HOP.iter().filter(|n| **n != "connection") {
        assert_eq!(count(&f, name), 0, "{name} forwarded to the Agent");
    }
    // The Agent is told whether the connection stays: close when asked, when
    // the body ends at the close, and when a chunked body is decoded for
    // HTTP/1.0; an HTTP/1.0 connection kept open is announced.
    let dechunk = client.http10 && head.framing == BodyFraming::Chunked;
    assert_eq!(head.dechunk, dechunk);
    let close = client.close || head.framing == BodyFraming::UntilClose || dechunk;
    assert_eq!(head.client, ClientConn { close, http10: client.http10 });
    let conns = f.iter().filter(|(n, _)| n.eq_ignore_ascii_case("connection")).collect::<Vec<_>>();
    if close {
        assert_eq!(conns, [&("Connection", &b"close"[..])]);
    } else if client.http10 {
        assert_eq!(conns, [&("Connection", &b"keep-alive"[..])]);
    } else {
        assert!(conns.is_empty());
    }
    if client.http10 {
        assert_eq!(count(&f, "transfer-encoding"), 0, "Transfer-Encoding sent to an HTTP/1.0 client");
    }
    if dechunk {
        assert_eq!(count(&f, "content-length"), 0, "a length sent with a decoded chunked body");
    }

    // The Agent must frame the body as the relay forwards it: parsing the
    // rendered head gives the same framing (a decoded body ends at the close).
    // (Skipped when adding Connection took the head past the relay's own field limit.)
    if agent.headers.len() > MAX_HEADERS {
        return;
    }
    let mut again = Vec::new();
    let sent = if dechunk { BodyFraming::UntilClose } else { head.framing };
    match parse_response(out, 1 << 20, method, client, &mut again) {
        Ok(Some(h2)) => {
            assert_eq!(h2.status, head.status);
            assert_eq!(
                h2.framing,
                sent,
                "relay sends the body as {:?}, the Agent would see {:?}:\n{}",
                sent,
                h2.framing,
                String::from_utf8_lossy(out)
            );
            assert_eq!(again, out, "rendering the Agent's head again changed it");
        }
        other => panic!("rendered head refused by parse_response: {other:?}\n{}", String::from_utf8_lossy(out)),
    }
}
