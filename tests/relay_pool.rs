//! The HTTP/1.1 session pool toward the intake: keep-alive reuses sessions,
//! a dead pooled session is replaced without the Agent noticing, and a
//! session that carried half a body is never reused. These pin
//! `upstream.protocol = "http1"` (HTTP/2's connections: tests/faults.rs).

mod common;

use std::time::Duration;

use common::*;

both_backends!(keep_alive_reuses_upstream_sessions, |io: &str| {
    // HTTP/1.1 to the intake: this checks the HTTP/1.1 session pool.
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

both_backends!(dead_pooled_session_is_replaced_transparently, |io: &str| {
    // HTTP/1.1 to the intake: this checks the HTTP/1.1 session pool.
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
    // HTTP/1.1 to the intake: this checks the HTTP/1.1 session pool.
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
