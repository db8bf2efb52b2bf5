//! What an operator reads: the status port's summary, metrics and health,
//! and a log that never holds a credential, on every path that logs.
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

use std::time::Duration;

use common::*;

both_backends_both_protocols!(status_port_serves_summary_metrics_health, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
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
        "fipsrelay_fips_module_info{module_version=\"3.1.0\",certificate=\"5314\",status=\"validated\",linkage=\"static\"} 1"
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

// /metrics stays lean: no series that cannot change in this configuration,
// a product's series once it has had a request, an error cause's once
// counted (docs/operations.md, "Which series appear").
both_backends_both_protocols!(metrics_series_appear_with_use, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let samples = |page: &str| page.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    let idle = samples(&relay.status_page("/metrics"));
    for absent in [
        "fipsrelay_requests_total",
        "fipsrelay_upstream_errors_total",
        "fipsrelay_request_duration_seconds",
        "fipsrelay_upstream_sessions_open",
    ] {
        assert!(!idle.iter().any(|l| l.starts_with(absent)), "{absent} at idle:\n{}", idle.join("\n"));
    }
    // Health, panic, FIPS module and process series are there from the start.
    for present in [
        "fipsrelay_upstream_address_up{upstream=\"trace.agent.ddog-gov.com\"",
        "fipsrelay_upstream_panic{upstream=\"snmp-traps-intake.ddog-gov.com\"} 0",
        "fipsrelay_fips_module_info{module_version=",
        "fipsrelay_build_info{relay_version=",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(idle.iter().any(|l| l.starts_with(present)), "{present} missing at idle:\n{}", idle.join("\n"));
    }

    assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{}").status, 202);
    // appsec has no upstream by default: 503, counted under its cause.
    assert_eq!(relay.request(11, "POST", "/api/v2/appsecevts", &[], b"{}").status, 503);
    relay.wait_metric("fipsrelay_requests_total{product=\"traces\",class=\"2xx\"}", |v| v == 1.0);
    relay.wait_metric("fipsrelay_upstream_errors_total{product=\"appsec\",cause=\"unconfigured\"}", |v| v == 1.0);
    let used = samples(&relay.status_page("/metrics"));
    let text = used.join("\n");
    let errors: Vec<&String> = used.iter().filter(|l| l.starts_with("fipsrelay_upstream_errors_total")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(!text.contains("class=\"1xx\""), "{text}");
    assert!(text.contains("fipsrelay_request_duration_seconds_count{product=\"traces\"} 1"), "{text}");
    // Ports the test never used have no series; neither do the hosts behind them.
    assert!(!text.contains("product=\"metrics\"") && !text.contains("product=\"logs\""), "{text}");
    assert!(text.contains("fipsrelay_upstream_sessions_open{upstream=\"trace.agent.ddog-gov.com\"}"), "{text}");
    assert!(!text.contains("fipsrelay_upstream_sessions_open{upstream=\"metrics.agent.ddog-gov.com\"}"), "{text}");
    // HTTP/2 series only where HTTP/2 can be spoken.
    assert_eq!(
        text.contains("fipsrelay_upstream_h2_streams_total{upstream=\"trace.agent.ddog-gov.com\"}"),
        protocol.is_h2(),
        "{text}"
    );
    assert_eq!(text.contains("fipsrelay_upstream_h2_http1_fallback"), protocol.is_h2(), "{text}");
});

both_backends_both_protocols!(credentials_never_reach_the_log, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("log.level = \"trace\"\nupstream.response_timeout = \"300ms\""),
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
    // Stopped, the relay has logged all it ever will, the stop included.
    relay.terminate(Duration::from_secs(10));
    let log = relay.log();
    assert!(log.lines().count() > 8, "the error paths must have logged:\n{log}");
    assert!(!log.contains(FAKE_KEY), "API key leaked into the log:\n{log}");
    assert!(!log.contains(&FAKE_KEY[..20]), "API key prefix leaked into the log:\n{log}");
});
