//! Answer head parsing and rendering for the Agent (`http1::parse_response`),
//! checked against invariants, not only for panics.
#![no_main]

use fipsrelay::http1::{parse_response, BodyFraming, Method, ResponseError, ResponseHead, MAX_HEADERS};
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

fn parse(data: &[u8], method: Method, close: bool, out: &mut Vec<u8>) -> Result<Option<ResponseHead>, ResponseError> {
    parse_response(data, MAX_HEAD, method, close, out)
}

fuzz_target!(|data: &[u8]| {
    // The request method and the client's close wish come from the input's
    // length so that seeds stay plain HTTP answers.
    let method = [Method::Other, Method::Get, Method::Head][data.len() % 3];
    let client_close = data.len() % 5 == 0;
    let mut out = Vec::new();
    let full = parse(data, method, client_close, &mut out);
    if let Ok(Some(head)) = &full {
        check_accepted(data, head, method, client_close, &out);
    }

    let mut out_prefix = Vec::new();
    for cut in split_points(data) {
        let prefix = parse(&data[..cut], method, client_close, &mut out_prefix);
        match (&prefix, &full) {
            (Ok(None), _) => {}
            (Ok(Some(p)), Ok(Some(f))) => {
                assert_eq!(
                    (p.head_len, p.status, p.framing, p.upstream_close),
                    (f.head_len, f.status, f.framing, f.upstream_close)
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
        if let Ok(Some(head)) = parse_response(data, small, method, client_close, &mut out_prefix) {
            assert!(head.head_len <= small, "head of {} bytes accepted under a limit of {small}", head.head_len);
        }
    }
});

fn check_accepted(data: &[u8], head: &ResponseHead, method: Method, client_close: bool, out: &[u8]) {
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
    let closes = f.iter().filter(|(n, _)| n.eq_ignore_ascii_case("connection")).collect::<Vec<_>>();
    if client_close || head.framing == BodyFraming::UntilClose {
        assert_eq!(closes, [&("Connection", &b"close"[..])]);
    } else {
        assert!(closes.is_empty());
    }

    // The Agent must frame the body as the relay forwards it: parsing the
    // rendered head gives the same framing.
    // (Skipped when adding Connection took the head past the relay's own field limit.)
    if agent.headers.len() > MAX_HEADERS {
        return;
    }
    let mut again = Vec::new();
    match parse_response(out, 1 << 20, method, client_close, &mut again) {
        Ok(Some(h2)) => {
            assert_eq!(h2.status, head.status);
            assert_eq!(
                h2.framing,
                head.framing,
                "relay frames the body as {:?}, the Agent would see {:?}:\n{}",
                head.framing,
                h2.framing,
                String::from_utf8_lossy(out)
            );
            assert_eq!(again, out, "rendering the Agent's head again changed it");
        }
        other => panic!("rendered head refused by parse_response: {other:?}\n{}", String::from_utf8_lossy(out)),
    }
}
