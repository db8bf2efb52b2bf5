//! HTTP/1.1 framing toward the Agent: a really malformed request gets 400
//! (431, 413 for the oversized) and reaches nothing; a relay error keeps the
//! Agent's connection once its body is read; a body cut short by the intake
//! is never read as a request of its own (no smuggling).
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

use std::time::Duration;

use common::*;

/// Requests the relay must refuse without forwarding anything.
const MALFORMED: &[(&str, u16)] = &[
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\nContent-Length: 1\r\n\r\na", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nContent-Length: 1\r\n\r\na", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\nContent-Length: 1\r\n\r\na", 400),
    ("POST /api/v2/series HTTP/1.1\nHost: x\nContent-Length: 1\n\na", 400),
    ("POST http://evil.example/api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na", 400),
    // Fuzz finding F1: Connection must not strip a framing field from the upstream head.
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nA", 400),
    ("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nConnection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
];

both_backends_both_protocols!(malformed_requests_get_400_and_reach_nothing, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay =
        Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with("limits.max_body_bytes = 100000"));
    for (raw, status) in MALFORMED {
        let mut client = relay.connect(1);
        client.write_raw(raw.as_bytes());
        let r = client.read_response(false).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(r.status, *status, "{raw:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(client.closed_by_peer(), "{raw:?}: connection must close");
    }
    // Oversized head and body.
    let mut client = relay.connect(1);
    let big = format!("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000));
    client.write_raw(big.as_bytes());
    assert_eq!(client.read_response(false).unwrap().status, 431);
    let r = relay.request(1, "POST", "/api/v2/series", &[], &payload(100_001, 1));
    assert_eq!(r.status, 413);
    let mut client = relay.connect(1);
    send(
        client.stream(),
        "POST",
        "/api/v2/series",
        &[("Transfer-Encoding", "chunked")],
        &encode_chunked(&payload(150_000, 2), 10_000),
    )
    .unwrap();
    assert_eq!(client.read_response(false).unwrap().status, 413);
    // The chunked 413 may have started a request upstream; it must never complete.
    let complete: Vec<_> = intake.mock.records();
    assert!(complete.is_empty(), "{} requests reached the intake", complete.len());
    assert!(relay.log().contains("request refused"));
});

both_backends_both_protocols!(
    relay_errors_keep_the_agent_connection_once_the_body_is_read,
    |io: &str, protocol: Protocol| {
        // HTTP/1.1, as the Agent sends: an intake that is not there gets 502,
        // and the body the relay did not forward is read and dropped, so the
        // Agent's retry rides on the same connection.
        let dir = TestDir::new();
        let intake = Intake::start(dir.path());
        let relay = Relay::start(dir.path(), io, refused_addr(), &intake.ca_file, &protocol.with(""));
        let mut c = relay.connect(1);
        let body = vec![b'x'; 200 * 1024];
        for attempt in 0..3 {
            let r = c.request("POST", "/api/v2/series", &[], &body);
            assert_eq!(r.status, 502, "attempt {attempt}");
            assert_eq!(r.header("connection"), None, "attempt {attempt}: an HTTP/1.1 connection kept needs no field");
        }
        // A body larger than the drain limit (8 MiB) is not read: the connection closes, and says so.
        let mut big = relay.connect(1);
        let head = "POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n";
        big.write_raw(head.as_bytes());
        let r = big.read_response(false).unwrap();
        assert_eq!((r.status, r.header("connection")), (502, Some("close")));
    }
);

both_backends_both_protocols!(a_body_cut_by_the_intake_is_never_read_as_a_request, |io: &str, protocol: Protocol| {
    // The intake resets the connection after the head, while the body is
    // still coming; the relay answers 502 and reads what is left of the body
    // to keep the connection. The body's tail looks like a request: it must
    // be dropped as body, never answered as a request of its own.
    let dir = TestDir::new();
    let intake = Intake::start_with(
        dir.path(),
        Behavior { fault: Fault::ResetMidRequest, ..Behavior::default() },
        CipherMode::Default,
    );
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let tail = b"GET /api/v1/validate?SMUGGLED=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let first = vec![b'a'; 512 * 1024];
    let mut c = relay.connect(1);
    let head =
        format!("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", first.len() + tail.len());
    c.write_raw(head.as_bytes());
    c.write_raw(&first);
    // The tail goes once the intake has cut the request. Over HTTP/2 its
    // stream reset fails the exchange at once (counted before the 502 goes
    // out); over HTTP/1.1 its TCP reset takes the connection out of the
    // kernel's table, and the relay finds out on its next write.
    let cut = if protocol.is_h2() {
        relay.wait_metric_sum("fipsrelay_upstream_errors_total", |v| v >= 1.0) >= 1.0
    } else {
        let port = intake.addr().port();
        eventually(Duration::from_secs(5), || intake.mock.connections_accepted() >= 1 && established_to(port) == 0)
    };
    assert!(cut, "the intake did not cut the request:\n{}", relay.log());
    c.write_raw(tail);
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    // Nothing else may come: a second answer would be the tail, smuggled.
    c.stream().set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut more = [0u8; 256];
    match std::io::Read::read(&mut c.reader, &mut more) {
        Ok(0) => {}
        Ok(n) => panic!("an answer nobody asked for: {:?}", String::from_utf8_lossy(&more[..n])),
        Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
    }
    assert!(!relay.log().contains("SMUGGLED"), "{}", relay.log());
});
