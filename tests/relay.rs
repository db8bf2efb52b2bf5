//! End to end: Agent-like client → fipsrelay process → FIPS TLS → mock intake.
//! Every scenario runs on both I/O backends.

mod common;

use std::time::Duration;

use common::*;

/// Forwarding ports and the host each must reach (DESIGN §1).
const PORT_HOSTS: &[(u16, &str, &str)] = &[
    (1, "/api/v2/series", "metrics.agent.ddog-gov.com"),
    (2, "/api/v0.2/traces", "trace.agent.ddog-gov.com"),
    (3, "/api/v2/profile", "intake.profile.ddog-gov.com"),
    (4, "/api/v1/collector", "process.ddog-gov.com"),
    (5, "/api/v2/logs", "agent-http-intake.logs.ddog-gov.com"),
    (6, "/api/v2/dbmmetrics", "dbm-metrics-intake.ddog-gov.com"),
    (7, "/api/v2/databasequery", "dbquery-intake.ddog-gov.com"),
    (8, "/api/v2/ndm", "ndm-intake.ddog-gov.com"),
    (9, "/api/v2/ndmtraps", "snmp-traps-intake.ddog-gov.com"),
    (10, "/api/v2/apmtelemetry", "instrumentation-telemetry-intake.ddog-gov.com"),
    (12, "/api/v2/orch", "orchestrator.ddog-gov.com"),
    (13, "/api/v2/secdump", "runtime-security-http-intake.logs.ddog-gov.com"),
    (14, "/api/v2/compliance", "cspm-intake.ddog-gov.com"),
    (15, "/api/v2/ndmflow", "ndmflow-intake.ddog-gov.com"),
    (1, "/api/v1/validate?api_key=5f2c8a1e9b7d4c3a6e0f1b2d3c4a5e6f", "api.ddog-gov.com"),
    (1, "/support/flare/12345", "flare.ddog-gov.com"),
];

both_backends!(every_port_reaches_the_intake_with_sni_and_host, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    for (i, (offset, path, _)) in PORT_HOSTS.iter().enumerate() {
        let body = payload(100 + i, i as u64);
        let r = relay.request(
            *offset,
            "POST",
            path,
            &[("DD-API-KEY", FAKE_KEY), ("Content-Encoding", "zstd"), ("X-Datadog-Test", "1")],
            &body,
        );
        assert_eq!(r.status, 202, "port offset {offset} {path}: {:?}", String::from_utf8_lossy(&r.body));
    }
    let records = intake.mock.records();
    assert_eq!(records.len(), PORT_HOSTS.len());
    for (i, (offset, path, host)) in PORT_HOSTS.iter().enumerate() {
        let rec = records
            .iter()
            .find(|r| r.path == *path && r.body_len == 100 + i as u64)
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(rec.sni.as_deref(), Some(*host), "SNI for offset {offset} {path}");
        assert_eq!(rec.host.as_deref(), Some(*host), "Host for offset {offset} {path}");
        assert_eq!(rec.body_hash, body_hash(&payload(100 + i, i as u64)));
        assert_eq!(rec.header("content-encoding"), Some("zstd"), "headers pass through");
        assert_eq!(rec.header("dd-api-key"), Some(FAKE_KEY));
        assert_eq!(rec.header("x-datadog-test"), Some("1"));
    }
});

both_backends!(bodies_arrive_byte_exact, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
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

both_backends!(keep_alive_reuses_upstream_sessions, |io: &str| {
    // HTTP/1.1 to the intake whatever FIPSRELAY_TEST_PROTOCOL says: this checks the HTTP/1.1 session pool.
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "upstream.protocol = \"http1\"");
    let mut total = 0;
    for c in 0..4 {
        let mut client = relay.connect(1);
        for i in 0..50 {
            let r = client.request("POST", "/api/v2/series", &[], &payload(512, c * 100 + i));
            assert_eq!(r.status, 202);
            total += 1;
        }
    }
    assert_eq!(intake.mock.stats().requests, total);
    // Two workers, sequential clients: a handful of sessions at most.
    let sessions = intake.mock.connections_accepted();
    assert!(sessions <= 4, "{sessions} upstream sessions for {total} requests");
    let hits = relay.wait_metric("fipsrelay_pool_hits_total{product=\"metrics\"}", |v| v >= (total - 4) as f64);
    assert!(hits >= (total - 4) as f64, "pool hits {hits}");
});

both_backends!(pipelined_requests_are_answered_in_order, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
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

both_backends!(expect_continue_head_and_no_body_answers, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
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

both_backends!(intake_statuses_pass_through, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    for status in [403u16, 413, 429, 500, 503] {
        intake.mock.set_behavior(Behavior { status, body: format!("{{\"status\":{status}}}"), ..Behavior::default() });
        let r = relay.request(1, "POST", "/api/v2/series", &[], b"{}");
        assert_eq!(r.status, status);
        assert_eq!(r.body, format!("{{\"status\":{status}}}").as_bytes());
    }
});

both_backends!(intake_down_is_502, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let relay = Relay::start(dir.path(), io, closed, &intake.ca_file, "");
    let r = relay.request(1, "POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], b"{}");
    assert_eq!(r.status, 502);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains("connect") && body.contains("metrics.agent.ddog-gov.com"), "{body}");
    let log = relay.log();
    assert!(
        log.contains("product=\"metrics\"") && log.contains(&closed.to_string()) && log.contains("cause=\"connect\""),
        "{log}"
    );
});

both_backends!(intake_slow_is_504, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start_with(
        dir.path(),
        Behavior { latency: Duration::from_secs(3), ..Behavior::default() },
        CipherMode::Default,
    );
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "upstream.response_timeout = \"300ms\"");
    let r = relay.request(5, "POST", "/api/v2/logs", &[], b"[]");
    assert_eq!(r.status, 504);
    assert!(relay.log().contains("cause=\"timeout\""));
});

both_backends!(intake_resets_is_502_and_relay_recovers, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    for fault in [Fault::ResetAfterRequest, Fault::CloseAfterHead, Fault::CloseMidAnswer] {
        intake.mock.set_behavior(Behavior { fault, ..Behavior::default() });
        let mut client = relay.connect(1);
        send(client.stream(), "POST", "/api/v2/series", &[], b"{}").unwrap();
        match client.read_response(false) {
            // Before any answer byte: a status the Agent retries.
            Ok(r) => assert_eq!(r.status, 502, "{fault:?}"),
            // After the answer started: the connection is cut, the Agent retries.
            Err(_) => assert!(matches!(fault, Fault::CloseMidAnswer | Fault::CloseAfterHead), "{fault:?}"),
        }
    }
    intake.mock.set_behavior(Behavior::default());
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
});

both_backends!(wrong_ca_is_502_with_cause_logged, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let other = TestPki::generate(&[]);
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, &other.ca_cert_pem).unwrap();
    let relay = Relay::start(dir.path(), io, intake.addr(), &wrong_ca, "");
    let r = relay.request(1, "POST", "/api/v2/series", &[], b"{}");
    assert_eq!(r.status, 502);
    let log = relay.log();
    assert!(log.contains("cause=\"tls\"") && log.contains("invalid peer certificate"), "{log}");
    assert!(intake.mock.records().is_empty());
});

both_backends!(non_fips_suite_only_intake_is_refused, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start_with(dir.path(), Behavior::default(), CipherMode::ChaChaOnly);
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    let r = relay.request(1, "POST", "/api/v2/series", &[], b"{}");
    assert_eq!(r.status, 502);
    assert!(relay.log().contains("cause=\"tls\""));
    assert!(eventually(Duration::from_secs(5), || intake.mock.handshake_failures() > 0));
    assert!(intake.mock.records().is_empty(), "nothing may reach an intake over a non-FIPS suite");
});

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

both_backends!(malformed_requests_get_400_and_reach_nothing, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "limits.max_body_bytes = 100000");
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

both_backends!(credentials_never_reach_the_log, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        "log.level = \"trace\"\nupstream.response_timeout = \"300ms\"",
    );
    let key_headers = [("DD-API-KEY", FAKE_KEY), ("Authorization", "Bearer 5f2c8a1e9b7d4c3a6e0f1b2d3c4a5e6f")];
    let validate = format!("/api/v1/validate?api_key={FAKE_KEY}");
    // Success, intake errors, timeouts, faults, malformed requests, appsec.
    assert_eq!(relay.request(1, "GET", &validate, &key_headers, b"").status, 202);
    intake.mock.set_behavior(Behavior { status: 403, ..Behavior::default() });
    relay.request(1, "GET", &validate, &key_headers, b"");
    intake.mock.set_behavior(Behavior { latency: Duration::from_secs(2), ..Behavior::default() });
    assert_eq!(relay.request(1, "GET", &validate, &key_headers, b"").status, 504);
    intake.mock.set_behavior(Behavior { fault: Fault::ResetAfterRequest, ..Behavior::default() });
    relay.request(1, "POST", &validate, &key_headers, FAKE_KEY.as_bytes());
    let mut c = relay.connect(1);
    c.write_raw(
        format!("GET {validate} HTTP/1.1\r\nDD-API-KEY: {FAKE_KEY}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .as_bytes(),
    );
    let _ = c.read_response(false);
    let mut c = relay.connect(1);
    c.write_raw(format!("GET {validate} HTTP/1.1\nDD-API-KEY: {FAKE_KEY}\n\n").as_bytes());
    let _ = c.read_response(false);
    relay.request(11, "POST", &validate, &key_headers, b"x");
    drop(intake);
    relay.request(1, "POST", &validate, &key_headers, b"x");
    std::thread::sleep(Duration::from_millis(300));
    let log = relay.log();
    assert!(log.lines().count() > 8, "the error paths must have logged:\n{log}");
    assert!(!log.contains(FAKE_KEY), "API key leaked into the log:\n{log}");
    assert!(!log.contains(&FAKE_KEY[..20]), "API key prefix leaked into the log:\n{log}");
});

/// A relay (`io`, `extra` config lines) in front of an intake that answers
/// after `latency`, with one request in flight through it: the intake holds
/// it (the mock records a request on arrival, then waits), its answer is
/// the handle's.
struct InFlight {
    intake: Intake,
    relay: Relay,
    answer: std::thread::JoinHandle<Response>,
}

fn request_in_flight(dir: &std::path::Path, io: &str, latency: Duration, extra: &str) -> InFlight {
    let intake = Intake::start_with(dir, Behavior { latency, ..Behavior::default() }, CipherMode::Default);
    let relay = Relay::start(dir, io, intake.addr(), &intake.ca_file, extra);
    let addr = relay.addr(1);
    let answer = std::thread::spawn(move || Client::connect(addr).request("POST", "/api/v2/series", &[], b"{}"));
    assert!(eventually(Duration::from_secs(5), || intake.mock.stats().requests == 1), "{}", relay.log());
    InFlight { intake, relay, answer }
}

both_backends!(graceful_shutdown_answers_in_flight_requests, |io: &str| {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), io, Duration::from_millis(800), "");
    let addr = relay.addr(1);
    let idle = relay.connect(5); // an idle keep-alive connection must not hold the drain
    let status = relay.terminate(Duration::from_secs(15));
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 202, "in-flight request answered by the intake");
    assert!(status.success(), "exit status {status}");
    drop(idle);
    // No new connections after the stop.
    assert!(std::net::TcpStream::connect(addr).is_err());
});

both_backends!(drain_timeout_answers_503, |io: &str| {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), io, Duration::from_secs(5), "shutdown.drain_timeout = \"300ms\"");
    std::thread::sleep(Duration::from_millis(200));
    let status = relay.terminate(Duration::from_secs(10));
    assert_eq!(in_flight.join().unwrap().status, 503);
    assert!(status.success(), "exit status {status}");
});

both_backends!(status_port_serves_summary_metrics_health, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    for _ in 0..3 {
        assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{}").status, 202);
    }
    let v = relay.wait_metric("fipsrelay_requests_total{product=\"traces\",class=\"2xx\"}", |v| v == 3.0);
    assert_eq!(v, 3.0);
    let metrics = relay.status_page("/metrics");
    assert!(metrics.contains("fipsrelay_request_duration_seconds_count{product=\"traces\"} 3"), "{metrics}");
    assert!(metrics.contains("fipsrelay_request_body_bytes_total{product=\"traces\"} 6"));
    assert!(metrics.contains("fipsrelay_upstream_sessions_open{upstream=\"trace.agent.ddog-gov.com\"}"));
    let summary = relay.status_page("/");
    let module = "AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated";
    assert!(summary.contains(&format!("fips: enabled ({module})")), "{summary}");
    assert!(metrics.contains(
        "fipsrelay_fips_module_info{version=\"3.1.0\",certificate=\"5314\",status=\"validated\",linkage=\"static\"} 1"
    ), "{metrics}");
    assert!(relay.log().contains(&format!("fips={module}")), "{}", relay.log());
    let backend = if io == "uring" { "io: io_uring" } else { "io: epoll" };
    assert!(summary.contains(backend), "{summary}");
    assert!(summary.lines().any(|l| l.starts_with("traces (2)") && l.contains(" 3 ")), "{summary}");
    let health = relay.status_page("/health");
    assert!(health.contains("\"status\":\"ok\"") && health.contains("\"fips\":true"), "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let m = &health["fips_module"];
    assert_eq!(m["version"], "3.1.0", "{health}");
    assert_eq!(m["certificate"], 5314, "{health}");
    assert_eq!(m["status"], "validated", "{health}");
    assert_eq!(m["linkage"], "static", "{health}");
    assert_eq!(m["validated"], true, "{health}");
    assert_eq!(relay.request(0, "POST", "/admin", &[], b"x").status, 405);
    assert_eq!(relay.request(0, "GET", "/nope", &[], b"").status, 404);
});

#[test]
fn port_in_use_fails_the_start() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // Another process holds the metrics port (offset 1) of an otherwise free range.
    for _ in 0..10 {
        let base = free_range();
        let port = base + 1;
        let Ok(_taken) = std::net::TcpListener::bind(("127.0.0.1", port)) else { continue };
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nport_range_start = {base}\n[workers]\nio = \"epoll\"\n[upstream]\noverride_addr = \"127.0.0.1:9\"\nca_file = \"{}\"\n[admin]\nenabled = false\n",
                intake.ca_file.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains(&format!("cannot bind 127.0.0.1:{port}: Address already in use")) {
            return;
        }
        assert!(err.contains("Address already in use"), "{err}");
    }
    panic!("no range where only our port was taken");
}

#[test]
fn bad_config_names_the_key_and_fails() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[upstream]\nsite = \"ddog-gov.com\"\nconect_timeout = \"5s\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conect_timeout") && err.contains("line 3"), "{err}");

    std::fs::write(&config, "[upstream]\nconnect_timeout = \"soon\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.connect_timeout"), "{err}");

    let out = std::process::Command::new(relay_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .env("DD_FIPS_PORT_RANGE_START", "abc")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("DD_FIPS_PORT_RANGE_START"));
}

#[test]
fn check_config_prints_port_table_with_env_overrides() {
    let out = std::process::Command::new(relay_bin())
        .arg("check-config")
        .env("DD_FIPS_PORT_RANGE_START", "10000")
        .env("DD_SITE", "example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# 10001  metrics"), "{text}");
    assert!(text.contains("metrics.agent.example.com"), "{text}");
    assert!(text.contains("# 10015  network_devices_netflow      ndmflow-intake.example.com"), "{text}");
}

#[test]
fn version_reports_fips_module() {
    let out = std::process::Command::new(relay_bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fips: enabled (AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated)"),
        "{text}"
    );
    assert!(text.contains("TLS13_AES_256_GCM_SHA384") && !text.contains("CHACHA"), "{text}");
    assert!(text.contains("io_uring: "), "{text}");
}

/// Only the FIPS module encrypts: the relay binary links the pinned FIPS
/// build of AWS-LC (symbols prefixed `aws_lc_fips_0_13_11_`) and none of the
/// non-FIPS AWS-LC that rustls' `aws_lc_rs` feature also compiles
/// (`aws_lc_0_<version>_`).
#[test]
fn binary_links_only_the_fips_module() {
    let bin = std::fs::read(relay_bin()).unwrap();
    let has = |needle: &[u8]| bin.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"aws_lc_fips_0_13_11_"), "the pinned FIPS module's symbols are missing");
    assert!(!has(b"aws_lc_0_"), "the binary links a non-FIPS AWS-LC (aws_lc_0_* symbols)");
}

#[test]
fn unvalidated_module_key_is_checked() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[crypto]\nallow_unvalidated_module = \"yes\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_unvalidated_module"), "{err}");
    std::fs::write(&config, "[crypto]\nallow_unvalidated_module = true\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("allow_unvalidated_module = true"), "{text}");
}

#[test]
fn non_loopback_listen_needs_opt_in() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[listen]\naddress = \"0.0.0.0\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_non_local"));
}

both_backends!(dead_pooled_session_is_replaced_transparently, |io: &str| {
    // HTTP/1.1 to the intake whatever FIPSRELAY_TEST_PROTOCOL says: this checks the HTTP/1.1 session pool.
    let dir = TestDir::new();
    let mut intake = Intake::start(dir.path());
    let addr = intake.addr();
    let relay =
        Relay::start(dir.path(), io, addr, &intake.ca_file, "workers.threads = 1\nupstream.protocol = \"http1\"");
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"one").status, 202);
    relay.wait_metric("fipsrelay_upstream_sessions_idle{upstream=\"metrics.agent.ddog-gov.com\"}", |v| v == 1.0);
    // The intake restarts: the pooled session is now dead.
    intake.mock.shutdown();
    let mut cfg = MockConfig::new(addr, intake.pki.leaf_cert_pem.clone(), intake.pki.leaf_key_pem.clone());
    cfg.behavior = Behavior::default();
    let mut restarted = None;
    assert!(eventually(Duration::from_secs(5), || {
        restarted = MockIntake::start(cfg.clone()).ok();
        restarted.is_some()
    }));
    let restarted = restarted.unwrap();
    let r = relay.request(1, "POST", "/api/v2/series", &[], b"two");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(restarted.records().len(), 1);
    // The pool's accounting: the dead session was counted closed, the new one
    // is the only one open, and it is idle again.
    let open = "fipsrelay_upstream_sessions_open{upstream=\"metrics.agent.ddog-gov.com\"}";
    let idle = "fipsrelay_upstream_sessions_idle{upstream=\"metrics.agent.ddog-gov.com\"}";
    assert_eq!(relay.wait_metric(open, |v| v == 1.0), 1.0);
    assert_eq!(relay.wait_metric(idle, |v| v == 1.0), 1.0);
});

both_backends!(client_abort_mid_body_never_completes_upstream, |io: &str| {
    // HTTP/1.1 to the intake whatever FIPSRELAY_TEST_PROTOCOL says: this checks the HTTP/1.1 session pool.
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        "workers.threads = 1\nupstream.protocol = \"http1\"",
    );
    let mut c = relay.connect(1);
    c.write_raw(b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    c.write_raw(&payload(5000, 3));
    drop(c);
    assert!(eventually(Duration::from_secs(5), || intake.mock.connections_accepted() >= 1));
    // The next request must not ride on the session that carried half a body.
    let r = relay.request(1, "POST", "/api/v2/series", &[], b"whole");
    assert_eq!(r.status, 202);
    let records = intake.mock.records();
    assert_eq!(records.len(), 1, "only the complete request reaches the intake");
    assert_eq!(records[0].body_len, 5);
    assert!(intake.mock.connections_accepted() >= 2, "the aborted session was not reused");
});

both_backends!(slowloris_head_gets_408_within_header_timeout, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "limits.header_timeout = \"700ms\"");
    let mut c = relay.connect(1);
    c.write_raw(b"POST /api/v2/series HTTP/1.1\r\n");
    let started = std::time::Instant::now();
    // Trickle a header byte by byte: every read arrives well inside the idle timeout.
    let trickle = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in trickle {
        if std::io::Write::write_all(c.stream(), &[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let r = c.read_response(false).expect("an answer, not a hang");
    assert_eq!(r.status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.closed_by_peer());
    assert!(intake.mock.records().is_empty());
    // A normal request right after is served.
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
});

both_backends!(dead_address_is_skipped_before_any_request_byte, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let ca = intake.ca_file.display().to_string();
    // Two addresses for every host: a dead one first, then the intake.
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &format!(
            "upstream.override_addr = \"{dead}, {}\"\nupstream.ca_file = \"{ca}\"\nworkers.threads = 1",
            intake.addr()
        ),
    );
    for i in 0..6 {
        let r = relay.request(1, "POST", "/api/v2/series", &[("Connection", "close")], format!("{i}").as_bytes());
        assert_eq!(r.status, 202, "request {i}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(intake.mock.records().len(), 6);
    let log = relay.log();
    assert!(log.contains("trying the next one") && log.contains(&dead.to_string()), "{log}");
    relay.wait_metric("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"connect\"}", |v| v >= 1.0);
});

both_backends!(connections_beyond_the_limit_get_503_not_a_queue, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay =
        Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "workers.threads = 1\nlimits.max_connections = 2");
    let mut a = relay.connect(1);
    let mut b = relay.connect(1);
    assert_eq!(a.request("POST", "/api/v2/series", &[], b"a").status, 202);
    assert_eq!(b.request("POST", "/api/v2/series", &[], b"b").status, 202);
    // Two connections held open: the third is answered 503 at once and closed.
    let mut c = relay.connect(1);
    let r = c.request("POST", "/api/v2/series", &[], b"c");
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("limits.max_connections"));
    assert!(c.closed_by_peer());
    assert_eq!(intake.mock.records().len(), 2, "nothing from the refused connection is forwarded");
    // Once one closes, new connections are served again.
    drop(a);
    assert!(eventually(Duration::from_secs(5), || relay.request(1, "POST", "/api/v2/series", &[], b"d").status == 202));
    assert_eq!(b.request("POST", "/api/v2/series", &[], b"e").status, 202);
});

#[test]
fn diagnose_checks_every_upstream_and_names_failures() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[upstream]\noverride_addr = \"{}\"\nca_file = \"{}\"\n", intake.addr(), intake.ca_file.display()),
    )
    .unwrap();
    let out = std::process::Command::new(relay_bin())
        .args(["diagnose", "--config"])
        .arg(&good)
        .args(["--api-key", FAKE_KEY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("16 of 16 upstream hosts passed"), "{text}");
    assert!(text.contains("PASS api.ddog-gov.com") && text.contains("GET /api/v1/validate 202"), "{text}");
    assert!(text.contains("TLSv1_3 TLS13_AES_256_GCM_SHA384"), "{text}");
    assert!(!text.contains(FAKE_KEY), "the API key must not be printed");
    let validated = intake.mock.records().into_iter().filter(|r| r.path == "/api/v1/validate").collect::<Vec<_>>();
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0].header("dd-api-key"), Some(FAKE_KEY));
    assert_eq!(validated[0].sni.as_deref(), Some("api.ddog-gov.com"));

    let other = TestPki::generate(&[]);
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, &other.ca_cert_pem).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[upstream]\noverride_addr = \"{}\"\nca_file = \"{}\"\n", intake.addr(), wrong.display()),
    )
    .unwrap();
    let out = std::process::Command::new(relay_bin()).args(["diagnose", "--config"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL metrics.agent.ddog-gov.com") && text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("0 of 16 upstream hosts passed"), "{text}");
}

both_backends!(root_drops_to_run_user_and_keeps_serving, |io: &str| {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: privilege drop not testable here");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "run.user = \"nobody\"");
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().to_string();
    let nobody = "65534";
    assert!(field("Uid:").split_whitespace().skip(1).all(|u| u == nobody), "{}", field("Uid:"));
    assert!(field("Gid:").split_whitespace().skip(1).all(|g| g == nobody), "{}", field("Gid:"));
    assert!(field("CapEff:").ends_with("0000000000000000"), "{}", field("CapEff:"));
    assert!(field("CapPrm:").ends_with("0000000000000000"), "{}", field("CapPrm:"));
    assert!(relay.log().contains("dropped root privileges"));
    // Still relays over FIPS TLS as nobody, new sessions included.
    for i in 0..3 {
        let r = relay.request(1 + i, "POST", "/", &[], b"x");
        assert_eq!(r.status, 202);
    }
});

#[test]
fn unknown_run_user_fails_the_start() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[listen]\nport_range_start = 31003\n[run]\nuser = \"no-such-user-fipsrelay\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if unsafe { libc::geteuid() } == 0 {
        assert!(!out.status.success());
        assert!(err.contains("run.user") && err.contains("no such user"), "{err}");
    }
}

both_backends!(client_half_close_still_gets_the_answer, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
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

both_backends!(agent_that_stops_reading_is_dropped_after_the_idle_timeout, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "limits.client_idle_timeout = \"1s\"");
    // A 16 MB answer to a client that never reads it: the relay's writes stall.
    intake.mock.set_behavior(Behavior { body: "x".repeat(16 << 20), ..Behavior::default() });
    let mut stalled = relay.connect(1);
    send(stalled.stream(), "POST", "/api/v2/series", &[], b"{}").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || relay.log().contains("the Agent stopped reading")),
        "the stalled write was not given up:\n{}",
        relay.log()
    );
    // The relay is not stuck: others are served.
    intake.mock.set_behavior(Behavior::default());
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
    drop(stalled);
});

#[test]
fn restart_in_place_after_dropping_root_keeps_the_admin_token() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: privilege drop not testable here");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "run.user = \"nobody\"");
    // The packaged layout: config and CA readable by run.user, the token root's alone.
    let config = relay.log_path.with_extension("toml");
    for (p, mode) in [(dir.path(), 0o755), (config.as_path(), 0o644), (intake.ca_file.as_path(), 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let token_file = intake.ca_file.with_file_name("admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[limits]\n", "[limits]\nmax_body_bytes = 1000\n")).unwrap();
    let bearer = format!("Bearer {token}");
    let r = relay.request(0, "POST", "/admin/reload", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == 2),
        "{}",
        relay.log()
    );
    // The new process runs as nobody, applies the new limit, and still knows
    // the token it could not read from the root-owned file.
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uid.split_whitespace().skip(1).all(|u| u == "65534"), "{uid}");
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(2000, 1)).status, 413);
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(500, 1)).status, 202);
    let r = relay.request(0, "PUT", "/admin/log-level", &[("Authorization", &bearer)], b"info");
    assert_eq!(r.status, 200, "{}\n{}", String::from_utf8_lossy(&r.body), relay.log());
    assert!(!relay.log().contains(&token), "the token reached the log");
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

both_backends!(emfile_on_accept_backs_off_with_one_line_and_recovers, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "workers.threads = 1");
    let pid = relay.pid();
    // No descriptor left for the relay: the soft limit below what it holds
    // now (at exactly that, one that frees up now and then lets an accept
    // through, and that request gets 502 when its upstream connect fails).
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) }, 0);
    let tight = libc::rlimit { rlim_cur: open - 4, rlim_max: old.rlim_max };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &tight, std::ptr::null_mut()) }, 0);
    // Three Agents connect (the kernel completes the handshakes) and send.
    let addr = relay.addr(1);
    let clients: Vec<_> = (0..3u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.request("POST", "/api/v2/series", &[], &[b'a' + i; 10]).status
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || relay.log().contains("accept failed; backing off")),
        "{}",
        relay.log()
    );
    // Backing off, not spinning: well under a CPU second per second.
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_seconds(pid) - before;
    assert!(spent < 0.5, "the relay spent {spent:.2} CPU s in 1 s of EMFILE");
    let log = relay.log();
    assert_eq!(log.matches("accept failed; backing off").count(), 1, "{log}");
    assert!(log.contains("Too many open files"), "{log}");
    // Descriptors again: every waiting connection is accepted and served.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) }, 0);
    for c in clients {
        assert_eq!(c.join().unwrap(), 202);
    }
    assert_eq!(intake.mock.stats().requests, 3);
});

#[test]
fn restart_in_place_can_switch_the_io_backend_and_keep_idle_connections() {
    if skip_uring() || fipsrelay::io::probe_uring().is_err() {
        eprintln!("io_uring unavailable: skipping");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "");
    let config = relay.log_path.with_extension("toml");
    let mut idle = relay.connect(1);
    assert_eq!(idle.request("POST", "/api/v2/series", &[], b"0").status, 202);
    for (n, (from, to, shown)) in
        [("epoll", "uring", "io: io_uring"), ("uring", "epoll", "io: epoll")].iter().enumerate()
    {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace(&format!("io = \"{from}\""), &format!("io = \"{to}\""))).unwrap();
        unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
        assert!(
            eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == n + 2),
            "{}",
            relay.log()
        );
        assert!(relay.status_page("/").contains(shown), "{}", relay.status_page("/"));
        // The same Agent connection, handed over from one backend to the other.
        assert_eq!(idle.request("POST", "/api/v2/series", &[], b"1").status, 202, "{}", relay.log());
    }
    assert_eq!(intake.mock.stats().requests, 3);
}

#[test]
fn drain_closes_the_listeners_at_once() {
    // A request in flight keeps the drain going; meanwhile new connects are
    // refused instead of queueing where nobody will accept them.
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), "epoll", Duration::from_millis(1500), "");
    let addr = relay.addr(1);
    unsafe { libc::kill(relay.pid(), libc::SIGTERM) };
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("stopping: no new connections")));
    std::thread::sleep(Duration::from_millis(100));
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(refused.is_err(), "a connect during the drain was accepted by the kernel");
    assert_eq!(in_flight.join().unwrap().status, 202);
    assert!(relay.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn sigterm_during_a_restart_in_place_stops_instead() {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), "epoll", Duration::from_millis(1500), "");
    let config = relay.log_path.with_extension("toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("threads = 2", "threads = 1")).unwrap();
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("restarting in place: finishing")));
    unsafe { libc::kill(relay.pid(), libc::SIGTERM) };
    assert_eq!(in_flight.join().unwrap().status, 202, "the request in flight is still answered");
    let status = relay.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let log = relay.log();
    assert!(log.contains("stop requested during the restart in place"), "{log}");
    assert_eq!(log.matches("fipsrelay starting").count(), 1, "nothing was exec'd: {log}");
}

// ---- HTTP/1.0 clients (ApacheBench and friends) ----

/// One HTTP/1.0 request as ApacheBench writes it; `keep_alive` adds
/// `Connection: Keep-Alive` (ab -k).
fn http10(method: &str, path: &str, keep_alive: bool, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: ApacheBench/2.3\r\n{extra}");
    if keep_alive {
        head.push_str("Connection: Keep-Alive\r\n");
    }
    if method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Everything the relay sends until it closes the connection; fails when it
/// is still open after `within` (an HTTP/1.0 client waiting for that close
/// would hang until limits.client_idle_timeout).
fn read_until_close(c: &mut Client, within: Duration) -> Vec<u8> {
    use std::io::Read;
    c.stream().set_read_timeout(Some(within)).unwrap();
    let mut all = Vec::new();
    match c.reader.read_to_end(&mut all) {
        Ok(_) => all,
        Err(e) => panic!("the relay did not close within {within:?} ({e}); got {:?}", String::from_utf8_lossy(&all)),
    }
}

/// Splits a raw answer into its head (lowercased) and body.
fn split_answer(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete answer head") + 4;
    (String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase(), raw[end..].to_vec())
}

/// Answers of the relay's own that close the connection, whatever the
/// client asked: an HTTP/1.0 keep-alive client is told so (`Connection:
/// close`) and the close follows at once.
fn assert_closes_at_once(c: &mut Client, request: &[u8], status: u16, what: &str) {
    c.write_raw(request);
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!((r.status, r.header("connection")), (status, Some("close")), "{what}");
    read_until_close(c, Duration::from_secs(5));
}

both_backends!(http10_keep_alive_is_announced_and_kept, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    // Relayed answers, the intake's own errors among them, on one connection.
    let mut c = relay.connect(1);
    for (i, status) in [202u16, 202, 500, 403, 202].into_iter().enumerate() {
        intake.mock.set_behavior(Behavior { status, ..Behavior::default() });
        c.write_raw(&http10("POST", "/api/v2/series", true, "", format!("{{\"n\":{i}}}").as_bytes()));
        let r = c.read_response(false).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "request {i}");
        assert_eq!(r.header("content-length"), Some("2"), "request {i}");
    }
    intake.mock.set_behavior(Behavior::default());
    c.write_raw(&http10("GET", "/api/v1/validate", true, &format!("DD-API-KEY: {FAKE_KEY}\r\n"), b""));
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));
    c.write_raw(&http10("HEAD", "/api/v2/series", true, "", b""));
    let r = c.read_response(true).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));

    // Expect: 100-continue is ignored for HTTP/1.0 (RFC 9110 §10.1.1): no
    // interim answer it cannot read, the final one keeps the connection.
    let expect = http10("POST", "/api/v2/series", true, "Expect: 100-continue\r\n", b"hello");
    c.write_raw(&expect[..expect.len() - 5]);
    c.stream().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut early = [0u8; 64];
    match std::io::Read::read(&mut c.reader, &mut early) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("the relay answered before the body: {other:?} {:?}", String::from_utf8_lossy(&early)),
    }
    c.stream().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_raw(b"hello");
    let mut status_line = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut status_line).unwrap();
    assert_eq!(status_line, "HTTP/1.1 202 Accepted\r\n", "no 100 Continue for HTTP/1.0");
    let mut fields = String::new();
    while !fields.ends_with("\r\n\r\n") {
        assert!(std::io::BufRead::read_line(&mut c.reader, &mut fields).unwrap() > 0, "head cut: {fields}");
    }
    assert!(fields.contains("Connection: keep-alive\r\n"), "{fields}");
    let mut body = [0u8; 2];
    std::io::Read::read_exact(&mut c.reader, &mut body).unwrap();
    // And the next request on the same connection is served.
    c.write_raw(&http10("POST", "/api/v2/series", true, "", b"after"));
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));
    let records = intake.mock.records();
    assert_eq!(records.len(), 9);
    assert_eq!(records[7].body_hash, body_hash(b"hello"));
    assert_eq!(records[7].header("expect"), None);
    assert_eq!(records[8].body_hash, body_hash(b"after"));

    // Status port pages, a 404 and a 405 among them, on one connection.
    let mut s = relay.connect(0);
    for (method, path, status) in
        [("GET", "/health", 200u16), ("GET", "/metrics", 200), ("GET", "/nope", 404), ("DELETE", "/", 405)]
    {
        s.write_raw(&http10(method, path, true, "", b""));
        let r = s.read_response(false).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "{method} {path}");
    }
    s.write_raw(&http10("HEAD", "/", true, "", b""));
    let r = s.read_response(true).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));

    // The relay's own answers keep the connection too once the request's
    // body is read (it reads and drops it): a POST with a body on the status
    // port, admin answers, and the 5xx of an upstream that is not there.
    let mut s = relay.connect(0);
    let post_status = http10("POST", "/health", true, "", b"{}");
    assert_keeps(&mut s, &post_status, 405, "POST with a body on the status port");
    assert_keeps(&mut s, &http10("POST", "/admin/reload", true, "", b""), 401, "admin API without a token");
    let token = std::fs::read_to_string(intake.ca_file.with_file_name("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    assert_keeps(&mut s, &http10("POST", "/admin/log-level", true, &auth, b"debug"), 405, "admin wrong method");
    assert_keeps(&mut s, &http10("GET", "/admin/nope", true, &auth, b""), 404, "admin unknown route");
    assert_keeps(&mut s, &http10("GET", "/health", true, "", b""), 200, "status after the admin answers");
    let mut appsec = relay.connect(11);
    let unconfigured = http10("POST", "/api/v2/appsec", true, "", b"{}");
    assert_keeps(&mut appsec, &unconfigured, 503, "appsec has no upstream");
    assert_keeps(&mut appsec, &unconfigured, 503, "appsec again, same connection");
    drop(intake);
    let mut gone = relay.connect(1);
    let series = http10("POST", "/api/v2/series", true, "", b"{}");
    assert_keeps(&mut gone, &series, 502, "intake gone");
    assert_keeps(&mut gone, &series, 502, "intake gone, the Agent's retry on the same connection");
    // Answers after which the relay still closes say so: a malformed request.
    let malformed =
        b"POST /api/v2/series HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    assert_closes_at_once(&mut relay.connect(1), malformed, 400, "malformed request");
});

/// An answer of the relay's own that keeps an HTTP/1.0 keep-alive
/// connection: `Connection: keep-alive`, and the connection stays usable.
fn assert_keeps(c: &mut Client, request: &[u8], status: u16, what: &str) {
    c.write_raw(request);
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "{what}");
}

both_backends!(http10_without_keep_alive_is_closed_after_the_answer, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    for (offset, method, path, status) in [
        (1u16, "POST", "/api/v2/series", 202u16),
        (1, "GET", "/api/v1/validate", 202),
        (1, "HEAD", "/api/v2/series", 202),
        (0, "GET", "/health", 200),
        (0, "GET", "/nope", 404),
    ] {
        let mut c = relay.connect(offset);
        c.write_raw(&http10(method, path, false, "", if method == "POST" { b"{}" } else { b"" }));
        let r = c.read_response(method == "HEAD").unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("close")), "{method} {path}");
        let rest = read_until_close(&mut c, Duration::from_secs(5));
        assert!(rest.is_empty(), "{method} {path}: bytes after the answer: {:?}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(intake.mock.stats().requests, 3);
});

/// A TLS intake that answers with raw bytes, framing and all, for the
/// answers the mock intake cannot send: [`unframed_answer`] decides them.
struct RawIntake {
    addr: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
}

impl RawIntake {
    fn start(dir: &std::path::Path) -> RawIntake {
        let pki = TestPki::generate(&[]);
        let ca_file = dir.join("raw-ca.pem");
        std::fs::write(&ca_file, &pki.ca_cert_pem).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = MockConfig::new(addr, pki.leaf_cert_pem.clone(), pki.leaf_key_pem.clone());
        let tls = std::sync::Arc::new(loadgen::mock::server_config(&cfg).unwrap());
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(tls).unwrap();
                    let _ = serve_raw(rustls::StreamOwned::new(conn, sock));
                });
            }
        });
        RawIntake { addr, ca_file }
    }
}

/// One TLS session of the raw intake: requests with Content-Length bodies,
/// each answered by [`unframed_answer`]; a close-delimited answer ends the
/// session with close_notify.
fn serve_raw(mut tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let more = |tls: &mut rustls::StreamOwned<_, _>, buf: &mut Vec<u8>| -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = Read::read(tls, &mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !more(&mut tls, &mut buf)? {
                return Ok(());
            }
        };
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        req.parse(&buf[..head_len]).map_err(std::io::Error::other)?;
        let target = req.path.unwrap_or("/").to_string();
        let len: usize = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| std::str::from_utf8(h.value).unwrap().trim().parse().unwrap());
        while buf.len() < head_len + len {
            if !more(&mut tls, &mut buf)? {
                return Ok(());
            }
        }
        buf.drain(..head_len + len);
        let (answer, close) = unframed_answer(&target);
        tls.write_all(&answer)?;
        tls.flush()?;
        if close {
            tls.conn.send_close_notify();
            return tls.flush();
        }
    }
}

/// 100 kB: the body spans TLS records and relay reads.
fn unframed_body() -> Vec<u8> {
    payload(100_000, 77)
}

/// Targets ending in `chunked`: a chunked answer (with a trailer), the
/// session kept; anything else: no length, the body ends at the close.
fn unframed_answer(target: &str) -> (Vec<u8>, bool) {
    let body = unframed_body();
    if target.ends_with("chunked") {
        let mut a =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut chunked = encode_chunked(&body, 7_001);
        chunked.truncate(chunked.len() - 2);
        chunked.extend_from_slice(b"X-Checksum: 1\r\n\r\n");
        a.extend_from_slice(&chunked);
        (a, false)
    } else {
        let mut a = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        a.extend_from_slice(&body);
        (a, true)
    }
}

both_backends!(http10_answers_without_a_length_are_close_delimited, |io: &str| {
    // HTTP/1.1 to the intake whatever FIPSRELAY_TEST_PROTOCOL says: the raw intake speaks only HTTP/1.1.
    let dir = TestDir::new();
    let intake = RawIntake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr, &intake.ca_file, "upstream.protocol = \"http1\"");
    // HTTP/1.0, with keep-alive or not: the body as it is meant (chunks
    // decoded, trailer dropped), no length and no transfer coding, then the close.
    for keep_alive in [true, false] {
        for path in ["/api/v2/series?answer=chunked", "/api/v2/series?answer=close"] {
            let mut c = relay.connect(1);
            c.write_raw(&http10("POST", path, keep_alive, "", b"{}"));
            let (head, body) = split_answer(&read_until_close(&mut c, Duration::from_secs(10)));
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{path}: {head}");
            assert!(head.contains("\r\nconnection: close\r\n"), "{path}: {head}");
            assert!(!head.contains("transfer-encoding") && !head.contains("content-length"), "{path}: {head}");
            assert!(!head.contains("x-checksum"), "{path}: {head}");
            assert_eq!(body.len(), unframed_body().len(), "{path} keep-alive {keep_alive}");
            assert!(body == unframed_body(), "{path}: body differs");
        }
    }
    // HTTP/1.1 is unchanged: chunked passes through and the connection stays;
    // close-delimited is announced and closed.
    let mut c = relay.connect(1);
    for _ in 0..2 {
        let r = c.request("POST", "/api/v2/series?answer=chunked", &[], b"{}");
        assert_eq!((r.status, r.header("transfer-encoding"), r.header("connection")), (200, Some("chunked"), None));
        assert!(r.body == unframed_body());
    }
    let r = c.request("POST", "/api/v2/series?answer=close", &[], b"{}");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(r.body == unframed_body());
    assert!(read_until_close(&mut c, Duration::from_secs(5)).is_empty());
});

/// Runs ApacheBench against `url` with `args`, bounded by `limit`; its output.
fn run_ab(args: &[&str], url: &str, limit: Duration) -> String {
    use std::io::Read;
    let mut child = std::process::Command::new("/usr/bin/ab")
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ab");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("ab {args:?} did not finish within {limit:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "ab {args:?} failed ({status}):\n{out}\n{err}");
    out
}

/// The number ab prints after `label` ("Complete requests:      200").
fn ab_count(out: &str, label: &str) -> Option<u64> {
    out.lines().find_map(|l| l.strip_prefix(label)).and_then(|v| v.trim().parse().ok())
}

both_backends!(apachebench_http10_with_and_without_keep_alive, |io: &str| {
    if !std::path::Path::new("/usr/bin/ab").exists() {
        eprintln!("/usr/bin/ab missing (Debian package apache2-utils; scripts/setup.sh installs it): skipping");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    let body = dir.path().join("series.json");
    std::fs::write(&body, br#"{"series":[{"metric":"ab.test","points":[[1700000000,1]],"type":"gauge"}]}"#).unwrap();
    let body = body.to_str().unwrap();
    let url = format!("http://127.0.0.1:{}/api/v2/series", relay.port(1));
    let base = ["-n", "200", "-c", "4", "-s", "10", "-p", body, "-T", "application/json"];
    for keep_alive in [false, true] {
        let mut args = base.to_vec();
        if keep_alive {
            args.push("-k");
        }
        let out = run_ab(&args, &url, Duration::from_secs(60));
        assert_eq!(ab_count(&out, "Complete requests:"), Some(200), "-k {keep_alive}:\n{out}");
        assert_eq!(ab_count(&out, "Failed requests:"), Some(0), "-k {keep_alive}:\n{out}");
        assert_eq!(ab_count(&out, "Non-2xx responses:"), None, "-k {keep_alive}:\n{out}");
        let kept = ab_count(&out, "Keep-Alive requests:").unwrap_or(0);
        assert_eq!(kept, if keep_alive { 200 } else { 0 }, "-k {keep_alive}:\n{out}");
    }
    assert_eq!(intake.mock.stats().requests, 400);
});

both_backends!(relay_errors_keep_the_agent_connection_once_the_body_is_read, |io: &str| {
    // HTTP/1.1, as the Agent sends: an intake that is not there gets 502,
    // and the body the relay did not forward is read and dropped, so the
    // Agent's retry rides on the same connection.
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, refused_addr(), &intake.ca_file, "");
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
});

both_backends!(a_body_cut_by_the_intake_is_never_read_as_a_request, |io: &str| {
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
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    let tail = b"GET /api/v1/validate?SMUGGLED=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let first = vec![b'a'; 512 * 1024];
    let mut c = relay.connect(1);
    let head =
        format!("POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", first.len() + tail.len());
    c.write_raw(head.as_bytes());
    c.write_raw(&first);
    std::thread::sleep(Duration::from_millis(500));
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
