//! Logs an operator can read in an outage: under load against an intake
//! that is down or resets every request, and under floods of refused
//! connections, bad admin tokens and malformed requests, the relay writes a
//! bounded number of lines: the first failure of each kind in full, then
//! one summary line per kind with `count=N` at most every 5 s per worker
//! (`logging::summary`), while state changes (`is DOWN`) are logged once
//! each. The counts in the lines add up to the failures the clients saw.
//!
//! Needs the workspace's `loadgen` binary beside `fipsrelay`
//! (`cargo build --workspace`; scripts/test.sh does it).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long the summaries of a worker may hold counts (`SUMMARY_INTERVAL`),
/// plus slack for a loaded machine.
const FLUSHED_WITHIN: Duration = Duration::from_secs(8);

/// At most this many lines during 10 s of outage at load (both workers).
const MAX_OUTAGE_LINES: usize = 100;

fn loadgen_bin() -> PathBuf {
    let p = Path::new(relay_bin()).parent().unwrap().join("loadgen");
    assert!(p.is_file(), "loadgen missing beside fipsrelay: run `cargo build --workspace` (scripts/test.sh does)");
    p
}

/// Closed-loop load against `port` for `secs` (no verification: the intake
/// answers nothing); loadgen's JSON report.
fn load(dir: &Path, port: u16, secs: &str, conns: usize) -> serde_json::Value {
    let json = dir.join(format!("load-{port}.json"));
    let out = Command::new(loadgen_bin())
        .args(["--target", &format!("http://127.0.0.1:{port}/api/v2/series")])
        .args(["--connections", &conns.to_string(), "--duration", secs, "--timeout", "5s", "-q"])
        .args(["--payload", "series", "--body-size", "256-2k"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "loadgen wrote no report ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The answers loadgen got with a status the relay makes on a failure.
fn relay_failures(report: &serde_json::Value) -> u64 {
    ["502", "503", "504"].iter().filter_map(|s| report["status"][s].as_u64()).sum()
}

/// The value of `count=N` in a summary line.
fn count_of(line: &str) -> u64 {
    let at = line.find(" count=").unwrap_or_else(|| panic!("a summary without count=: {line}"));
    line[at + 7..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// The events a log holds of the line `what`: one per line in full, `count`
/// per summary line; and how many summary lines.
fn events(log: &str, what: &str) -> (u64, usize) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
    let summaries: Vec<&str> = lines.iter().copied().filter(|l| l.contains("(summary:")).collect();
    let total = (lines.len() - summaries.len()) as u64 + summaries.iter().map(|l| count_of(l)).sum::<u64>();
    (total, summaries.len())
}

/// The log written after the first `from` bytes, once the summaries are out:
/// polled until `done` holds (at most [`FLUSHED_WITHIN`]).
fn log_since(relay: &Relay, from: usize, done: impl Fn(&str) -> bool) -> String {
    let mut log = String::new();
    eventually(FLUSHED_WITHIN, || {
        log = relay.log()[from..].to_string();
        done(&log)
    });
    log
}

/// 10 s of load (8 connections) on the metrics port.
fn outage_under_load(dir: &Path, relay: &Relay, io: &str, what: &str) -> (serde_json::Value, String) {
    let from = relay.log().len();
    let started = Instant::now();
    let report = load(dir, relay.port(1), "10s", 8);
    let failures = relay_failures(&report);
    // The last counts are written within one summary period of the last failure.
    let log = log_since(relay, from, |log| events(log, "upstream failure answered for retry").0 >= failures);
    let lines = log.lines().count();
    eprintln!(
        "{io} {what}: {} requests in {:?}, {} answered 502/503/504 ({}), errors {}; {lines} log lines ({} bytes), {} summary lines",
        report["requests"],
        started.elapsed(),
        failures,
        report["status"],
        report["errors"],
        log.len(),
        log.lines().filter(|l| l.contains("(summary:")).count()
    );
    assert!(failures > 500, "{what}: not much of a load: {}", report["status"]);
    assert!(
        lines < MAX_OUTAGE_LINES,
        "{what}: {lines} log lines for {failures} failures in 10 s; at most {MAX_OUTAGE_LINES}:\n{}",
        &log[..log.len().min(4000)]
    );
    // Every failure the client saw is in a line or a count; a few more
    // may be the relay's answers to requests loadgen gave up at its end.
    let (logged, summaries) = events(&log, "upstream failure answered for retry");
    assert!(summaries > 0, "{what}: no summary line:\n{log}");
    assert!(
        (failures..=failures + 16).contains(&logged),
        "{what}: the lines count {logged} failures, the client saw {failures}:\n{log}"
    );
    (report, log)
}

both_backends!(an_intake_down_for_10s_under_load_logs_a_bounded_summary, |io: &str| {
    // Nothing listens at the intake's address: connects are refused. The
    // address goes down once (passive marking), and panic mode answers 503
    // at once, with a probe that fails (502) every 250 ms.
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let down = refused_addr();
    let relay = Relay::start(
        dir.path(),
        io,
        down,
        &intake.ca_file,
        "health.enabled = true\nupstream.connect_timeout = \"300ms\"\nhealth.timeout = \"300ms\"",
    );
    let (_, log) = outage_under_load(dir.path(), &relay, io, "intake refusing connections");
    assert_eq!(relay.log().matches("is DOWN").count(), 1, "one transition line:\n{}", relay.log());
    assert!(log.contains("cause=\"upstream_down\"") || log.contains("cause=upstream_down"), "{log}");
});

both_backends_both_protocols!(
    an_intake_resetting_every_request_logs_a_bounded_summary,
    |io: &str, protocol: Protocol| {
        // Every request reaches the intake, which resets it (TCP RST over
        // HTTP/1.1, RST_STREAM over HTTP/2): a 502 each; the address stays up.
        let dir = TestDir::new();
        let intake = Intake::with_fault(dir.path(), Fault::ResetAfterRequest);
        let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
        let (report, _) =
            outage_under_load(dir.path(), &relay, io, &format!("intake resetting every request ({protocol:?})"));
        assert_eq!(report["ok"], 0, "{}", report["status"]);
        assert!(!relay.log().contains("is DOWN"), "{}", relay.log());
    }
);

/// One request on a fresh connection, its status (0: no answer).
fn one_shot(addr: std::net::SocketAddr, raw: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(raw).is_err() {
        return 0;
    }
    read_response(&mut BufReader::new(s), false).map(|r| r.status).unwrap_or(0)
}

both_backends!(refusals_in_floods_are_summarised, |io: &str| {
    const N: u64 = 300;
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay =
        Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "workers.threads = 1\nlimits.max_connections = 1");
    let from = relay.log().len();
    // Connections over limits.max_connections: 503 each.
    let mut held = relay.connect(1);
    assert_eq!(held.request("POST", "/api/v2/series", &[], b"{}").status, 202);
    let req = b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    for i in 0..N {
        assert_eq!(one_shot(relay.addr(1), req), 503, "connection {i} over the limit");
    }
    drop(held);
    relay.wait_idle("metrics");
    // Bad admin tokens, on one kept-alive connection: 401 each.
    let mut admin = relay.connect(0);
    for i in 0..N {
        let r = admin.request("POST", "/admin/reload", &[("Authorization", "Bearer wrong")], b"");
        assert_eq!(r.status, 401, "admin request {i}");
    }
    drop(admin);
    relay.wait_idle("status");
    // Malformed requests (two Content-Length values): 400 each, closed.
    let bad = b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    for i in 0..N {
        assert_eq!(one_shot(relay.addr(1), bad), 400, "malformed request {i}");
    }
    let kinds = [
        "too many connections on this worker; answered 503 at once and closed",
        "admin request refused: missing or wrong bearer token",
        // (Not "admin request refused".)
        "level=WARN msg=\"request refused",
    ];
    let log = log_since(&relay, from, |log| kinds.iter().all(|k| events(log, k).0 >= N));
    let lines = log.lines().count();
    eprintln!("{io}: {N} connections over the limit, {N} bad admin tokens, {N} malformed requests: {lines} log lines");
    for what in kinds {
        let (logged, summaries) = events(&log, what);
        assert_eq!(logged, N, "{what}: {logged} in the lines, {N} happened:\n{log}");
        assert!(summaries >= 1, "{what}: no summary:\n{log}");
    }
    // 1 + a summary every 5 s per kind, however slow the machine.
    assert!(lines < 30, "{lines} lines for {} refusals:\n{log}", 3 * N);
});
