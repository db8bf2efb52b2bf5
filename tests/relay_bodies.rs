//! Requests and answers, end to end: bodies arrive byte-exact whatever their
//! size and framing, pipelined requests are answered in order, Expect,
//! HEAD and 204 answers, and an Agent that half-closes still gets its answer.
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

use common::*;

both_backends_both_protocols!(bodies_arrive_byte_exact, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let sizes = [0usize, 1, 1000, 16 * 1024, 16 * 1024 + 1, 64 * 1024 + 7, 1 << 20, 8 << 20];
    let mut client = relay.connect(5);
    let mut expected = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let body = payload(size, 1000 + i as u64);
        let r = client.request("POST", "/api/v2/logs", &[], &body);
        assert_eq!(r.status, 202, "content-length {size}");
        let chunked = encode_chunked(&body, 1 + (size / 7).min(70_000));
        let r = client.request("POST", "/api/v2/logs", &[("Transfer-Encoding", "chunked")], &chunked);
        assert_eq!(r.status, 202, "chunked {size}");
        expected.push((size as u64, body_hash(&body)));
        expected.push((size as u64, body_hash(&body)));
    }
    let got: Vec<(u64, u64)> = intake.mock.records().iter().map(|r| (r.body_len, r.body_hash)).collect();
    assert_eq!(got, expected);
    let stats = intake.mock.stats();
    assert_eq!(stats.body_bytes, 2 * sizes.iter().sum::<usize>() as u64);
});

// A Content-Length body is read from the Agent straight into the TLS
// records that carry it (HTTP/1.1), or into the places of its DATA frames
// in the connection's output (HTTP/2), and sealed there: only what came
// with the request head is copied in user space.
both_backends_both_protocols!(long_bodies_are_sealed_where_they_were_read, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    // Windows that take the bodies whole: HTTP/2 carries them (no detour).
    let intake = Intake::start_config(dir.path(), |c| {
        c.h2_stream_window = Some(8 << 20);
        c.h2_connection_window = Some(64 << 20);
    });
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let sizes = [200_000usize, 1 << 20, 3 << 20 | 5];
    let mut client = relay.connect(5);
    let mut expected = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let body = payload(size, 77 + i as u64);
        assert_eq!(client.request("POST", "/api/v2/logs", &[], &body).status, 202, "{size} bytes");
        expected.push((size as u64, body_hash(&body)));
    }
    let got: Vec<(u64, u64)> = intake.mock.records().iter().map(|r| (r.body_len, r.body_hash)).collect();
    assert_eq!(got, expected);
    let total: usize = sizes.iter().sum();
    let forwarded = relay.wait_metric_sum("fipsrelay_request_body_bytes_total", |v| v >= total as f64);
    assert_eq!(forwarded, total as f64);
    let copied = relay.wait_metric_sum("fipsrelay_body_bytes_copied_total", |_| true);
    assert!(copied < 0.05 * forwarded, "{copied} of {forwarded} body bytes copied ({io}, {protocol:?})");
});

both_backends_both_protocols!(pipelined_requests_are_answered_in_order, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let mut client = relay.connect(1);
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(
            format!("POST /api/v2/series?n={i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab{i}").as_bytes(),
        );
    }
    batch.extend_from_slice(b"GET /api/v1/validate HTTP/1.1\r\nHost: x\r\n\r\n");
    client.write_raw(&batch);
    for _ in 0..6 {
        assert_eq!(client.read_response(false).unwrap().status, 202);
    }
    let paths: Vec<String> = intake.mock.records().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/api/v2/series?n=0",
            "/api/v2/series?n=1",
            "/api/v2/series?n=2",
            "/api/v2/series?n=3",
            "/api/v2/series?n=4",
            "/api/v1/validate"
        ]
    );
});

both_backends_both_protocols!(expect_continue_head_and_no_body_answers, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let mut client = relay.connect(2);
    client.write_raw(b"POST /api/v0.2/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut client.reader, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut client.reader, &mut blank).unwrap();
    client.write_raw(b"hello");
    assert_eq!(client.read_response(false).unwrap().status, 202);
    assert_eq!(intake.mock.records()[0].header("expect"), None, "Expect is answered by the relay");

    // HEAD: no body even though the intake sends Content-Length.
    let r = client.request("HEAD", "/api/v0.2/traces", &[], b"");
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    // 204 from the intake: no body, connection still usable.
    intake.mock.set_behavior(Behavior { status: 204, ..Behavior::default() });
    let r = client.request("POST", "/api/v0.2/traces", &[], b"x");
    assert_eq!(r.status, 204);
    intake.mock.set_behavior(Behavior::default());
    assert_eq!(client.request("POST", "/api/v0.2/traces", &[], b"y").status, 202);
});

both_backends_both_protocols!(client_half_close_still_gets_the_answer, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    for body in [&b"{}"[..], &payload(100_000, 9)[..]] {
        let mut c = relay.connect(1);
        send(c.stream(), "POST", "/api/v2/series", &[], body).unwrap();
        c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        let r = c.read_response(false).expect("answer after half-close");
        assert_eq!(r.status, 202);
        assert!(c.closed_by_peer(), "the relay closes once the answer is out");
    }
    let records = intake.mock.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].body_hash, body_hash(&payload(100_000, 9)));
});
