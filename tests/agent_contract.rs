//! DESIGN §1's answer rules as one table: for each fault that the intake or
//! the network produces, the status the Agent must get and whether the
//! intake saw the request.
//!
//! The Agent drops a payload on 400, 401, 403 and 413 and retries 408 and
//! 5xx (every pipeline) and network errors. So a failure that is the
//! relay's or the network's answers 502, 503 or 504, never a 4xx; a 4xx
//! comes from the intake itself, passed through unchanged, or for a request
//! that really is malformed (400, with the reason in the log).
//!
//! Each row runs on a fresh mock intake and relay, on both I/O backends and
//! both upstream protocols. The same faults under load, with every 2xx body
//! verified at the intake and the memory checked afterwards:
//! tests/faults.rs. Faults that need health checks or DNS (every address
//! down: 503, a host not resolved: 503) are in tests/upstream.rs; the drain
//! timeout (503) in tests/relay_lifecycle.rs; `limits.max_connections`
//! (503) in tests/relay_limits.rs; the egress proxy's failures (502) in
//! tests/proxy.rs.

mod common;

use std::time::Duration;

use common::*;

/// What produces the fault.
#[derive(Clone, Copy, Debug)]
enum Cause {
    /// The mock intake misbehaves this way (loadgen's `Fault`); fault
    /// `None` is the baseline.
    Intake(Fault),
    /// The intake answers with this status of its own (body `{"status":N}`).
    IntakeStatus(u16),
    /// The intake holds its answer 3 s; `upstream.response_timeout` is 300 ms.
    IntakeSlowerThanTimeout,
    /// The intake accepts TCP and never finishes the TLS handshake;
    /// `upstream.connect_timeout` is 300 ms.
    IntakeSilentHandshake,
    /// Nothing listens at the intake's address: the connect is refused.
    IntakeDown,
    /// The intake's certificate chains to a CA the relay does not trust.
    UntrustedCertificate,
    /// The intake offers only ChaCha20, which is not FIPS-approved.
    NonFipsSuitesOnly,
    /// The Agent sends to a port with no upstream (appsec, offset 11, by default).
    NoUpstream,
    /// The Agent's request is malformed: Content-Length and Transfer-Encoding both.
    MalformedRequest,
}

/// What the Agent gets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Agent {
    /// This status.
    Status(u16),
    /// 502 while nothing of the answer has gone out; once the intake's
    /// answer has started, the connection is cut before the answer is
    /// complete (a network error, which the Agent retries).
    Status502OrCut,
}

struct Row {
    fault: &'static str,
    cause: Cause,
    agent: Agent,
    /// Whether the intake recorded the request (exactly once), or never saw it.
    intake_saw: bool,
    /// For an answer of the relay's own: the `cause` label of
    /// `fipsrelay_upstream_errors_total` and of the log line.
    relay_cause: Option<&'static str>,
}

const fn row(
    fault: &'static str,
    cause: Cause,
    agent: Agent,
    intake_saw: bool,
    relay_cause: Option<&'static str>,
) -> Row {
    Row { fault, cause, agent, intake_saw, relay_cause }
}

use Agent::{Status, Status502OrCut};

/// DESIGN §1, fault by fault.
const ANSWER_RULES: &[Row] = &[
    // The intake's own answers pass through unchanged, 4xx included.
    row("intake accepts", Cause::Intake(Fault::None), Status(202), true, None),
    row("intake answers 400", Cause::IntakeStatus(400), Status(400), true, None),
    row("intake answers 403", Cause::IntakeStatus(403), Status(403), true, None),
    row("intake answers 413", Cause::IntakeStatus(413), Status(413), true, None),
    row("intake answers 429", Cause::IntakeStatus(429), Status(429), true, None),
    row("intake answers 500", Cause::IntakeStatus(500), Status(500), true, None),
    row("intake answers 503", Cause::IntakeStatus(503), Status(503), true, None),
    // The intake or the network fails: 502, 503 or 504, never a 4xx.
    row("intake resets after the request", Cause::Intake(Fault::ResetAfterRequest), Status(502), true, Some("closed")),
    row("intake resets mid-request", Cause::Intake(Fault::ResetMidRequest), Status(502), false, Some("closed")),
    row("intake closes after the answer head", Cause::Intake(Fault::CloseAfterHead), Status(502), true, Some("closed")),
    row("intake closes mid-answer", Cause::Intake(Fault::CloseMidAnswer), Status502OrCut, true, None),
    row("intake slower than response_timeout", Cause::IntakeSlowerThanTimeout, Status(504), true, Some("timeout")),
    row("intake down (connect refused)", Cause::IntakeDown, Status(502), false, Some("connect")),
    row("TLS handshake never finishes", Cause::IntakeSilentHandshake, Status(502), false, Some("tls")),
    row("TLS alert during the handshake", Cause::Intake(Fault::TlsAlert), Status(502), false, Some("tls")),
    row("intake certificate not trusted", Cause::UntrustedCertificate, Status(502), false, Some("tls")),
    row("intake offers no FIPS suite", Cause::NonFipsSuitesOnly, Status(502), false, Some("tls")),
    // The relay cannot forward: 503.
    row("no upstream for the port (appsec)", Cause::NoUpstream, Status(503), false, Some("unconfigured")),
    // Only a really malformed request gets a 4xx of the relay's own.
    row("malformed request", Cause::MalformedRequest, Status(400), false, None),
];

const METRICS_HOST: &str = "metrics.agent.ddog-gov.com";

/// Runs one row on a fresh intake and relay.
fn check(row: &Row, io: &str, protocol: Protocol) {
    let what = format!("{} ({io}, {protocol:?})", row.fault);
    let dir = TestDir::new();
    let (behavior, cipher) = match row.cause {
        Cause::Intake(fault) => (Behavior { fault, ..Behavior::default() }, CipherMode::Default),
        Cause::IntakeStatus(status) => {
            (Behavior { status, body: format!("{{\"status\":{status}}}"), ..Behavior::default() }, CipherMode::Default)
        }
        Cause::IntakeSlowerThanTimeout => {
            (Behavior { latency: Duration::from_secs(3), ..Behavior::default() }, CipherMode::Default)
        }
        Cause::IntakeSilentHandshake => {
            (Behavior { fault: Fault::Blackhole, ..Behavior::default() }, CipherMode::Default)
        }
        Cause::NonFipsSuitesOnly => (Behavior::default(), CipherMode::ChaChaOnly),
        _ => (Behavior::default(), CipherMode::Default),
    };
    let intake = Intake::start_with(dir.path(), behavior, cipher);
    let down = refused_addr();
    let upstream = if matches!(row.cause, Cause::IntakeDown) { down } else { intake.addr() };
    let ca_file = if matches!(row.cause, Cause::UntrustedCertificate) {
        let other = dir.path().join("other-ca.pem");
        std::fs::write(&other, TestPki::generate(&[]).ca_cert_pem).unwrap();
        other
    } else {
        intake.ca_file.clone()
    };
    let extra = match row.cause {
        Cause::IntakeSlowerThanTimeout => "upstream.response_timeout = \"300ms\"",
        Cause::IntakeSilentHandshake => "upstream.connect_timeout = \"300ms\"",
        _ => "",
    };
    let relay = Relay::start(dir.path(), io, upstream, &ca_file, &protocol.with(extra));

    // The Agent's request.
    let offset = if matches!(row.cause, Cause::NoUpstream) { 11 } else { 1 };
    let mut agent = relay.connect(offset);
    if matches!(row.cause, Cause::MalformedRequest) {
        agent.write_raw(
            b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        );
    } else {
        send(agent.stream(), "POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], b"{}").unwrap();
    }
    let answer = agent.read_response(false);
    match (&answer, row.agent) {
        (Ok(r), Status(want)) => {
            assert_eq!(r.status, want, "{what}: {}\n{}", String::from_utf8_lossy(&r.body), relay.log())
        }
        (Ok(r), Status502OrCut) => {
            assert_eq!(r.status, 502, "{what}: {}\n{}", String::from_utf8_lossy(&r.body), relay.log())
        }
        // The answer had started: the connection is cut, never completed.
        (Err(_), Status502OrCut) => {}
        (Err(e), Status(want)) => {
            panic!("{what}: the Agent wanted {want}, got a cut connection ({e})\n{}", relay.log())
        }
    }
    let log = || relay.log();

    // An intake's answer passes through with its body.
    if let (Cause::IntakeStatus(status), Ok(r)) = (row.cause, &answer) {
        assert_eq!(r.body, format!("{{\"status\":{status}}}").as_bytes(), "{what}");
    }
    // An answer of the relay's own: counted and logged with its cause, and
    // the body says which step failed for which host.
    if let Some(cause) = row.relay_cause {
        let metric = format!("fipsrelay_upstream_errors_total{{product=\"{}\",cause=\"{cause}\"}}", product(offset));
        assert_eq!(relay.wait_metric(&metric, |v| v >= 1.0), 1.0, "{what}: {metric}\n{}", log());
        assert!(log().contains(&format!("cause=\"{cause}\"")), "{what}:\n{}", log());
        if let Ok(r) = &answer {
            let body = String::from_utf8_lossy(&r.body).to_string();
            assert!(body.contains(&format!("({cause})")), "{what}: {body}");
            if offset == 1 {
                assert!(body.contains(METRICS_HOST), "{what}: {body}");
            }
        }
    }
    match row.cause {
        Cause::IntakeDown => {
            assert!(log().contains("product=\"metrics\"") && log().contains(&down.to_string()), "{what}:\n{}", log())
        }
        Cause::UntrustedCertificate => assert!(log().contains("invalid peer certificate"), "{what}:\n{}", log()),
        Cause::NonFipsSuitesOnly => {
            assert!(eventually(Duration::from_secs(5), || intake.mock.handshake_failures() > 0), "{what}")
        }
        Cause::MalformedRequest => {
            assert_eq!(answer.as_ref().unwrap().header("connection"), Some("close"), "{what}");
            assert!(agent.closed_by_peer(), "{what}: the connection must close");
            assert!(log().contains("request refused"), "{what}:\n{}", log());
        }
        _ => {}
    }

    // Whether the intake saw it: exactly once, over the protocol under test, or never.
    let records = intake.mock.records();
    if row.intake_saw {
        assert_eq!(records.len(), 1, "{what}: the intake recorded {} requests", records.len());
        assert_eq!(records[0].http2, protocol.is_h2(), "{what}: over {protocol:?}");
        assert_eq!(records[0].body_hash, body_hash(b"{}"), "{what}");
    } else {
        assert!(records.is_empty(), "{what}: {} requests reached the intake", records.len());
    }

    // The fault over, the relay serves the next request.
    if matches!(row.cause, Cause::Intake(_) | Cause::IntakeStatus(_) | Cause::IntakeSlowerThanTimeout) {
        intake.mock.set_behavior(Behavior::default());
        let r = relay.request(1, "POST", "/api/v2/series", &[], b"{}");
        assert_eq!(r.status, 202, "{what}: after the fault: {}\n{}", String::from_utf8_lossy(&r.body), log());
    }
}

/// The product named in metrics for a port offset.
fn product(offset: u16) -> &'static str {
    match offset {
        1 => "metrics",
        11 => "appsec",
        _ => unreachable!("the table uses offsets 1 and 11"),
    }
}

both_backends_both_protocols!(every_fault_gets_the_status_the_agent_needs, |io: &str, protocol: Protocol| {
    for row in ANSWER_RULES {
        check(row, io, protocol);
    }
});

/// The table keeps to DESIGN §1 whatever rows it gains: a row the relay
/// answers (it names a cause, or the intake never saw the request) gets
/// 502, 503 or 504, except the malformed request's 400.
#[test]
fn the_table_keeps_to_the_answer_rules() {
    for row in ANSWER_RULES {
        let status = match row.agent {
            Status(s) => s,
            Status502OrCut => 502,
        };
        let relays_own = row.relay_cause.is_some() || !row.intake_saw;
        if matches!(row.cause, Cause::MalformedRequest) {
            assert_eq!(status, 400, "{}", row.fault);
        } else if relays_own {
            assert!(matches!(status, 502..=504), "{}: the relay's own failure must be 502, 503 or 504", row.fault);
        }
        if (400..500).contains(&status) {
            assert!(
                matches!(row.cause, Cause::IntakeStatus(_) | Cause::MalformedRequest),
                "{}: a 4xx comes only from the intake or for a malformed request",
                row.fault
            );
        }
    }
}
