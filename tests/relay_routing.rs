//! Routing, end to end: each Agent port (DESIGN §1's table) reaches its
//! intake host, with that host as SNI and Host, headers passed through; a
//! host's dead address is skipped before any byte of a request is written.
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

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

both_backends_both_protocols!(every_port_reaches_the_intake_with_sni_and_host, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
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
        assert_eq!(rec.http2, protocol.is_h2(), "{protocol:?} to the intake");
    }
});

both_backends_both_protocols!(dead_address_is_skipped_before_any_request_byte, |io: &str, protocol: Protocol| {
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
        &protocol.with(&format!(
            "upstream.override_addr = \"{dead}, {}\"\nupstream.ca_file = \"{ca}\"\nworkers.threads = 1",
            intake.addr()
        )),
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
