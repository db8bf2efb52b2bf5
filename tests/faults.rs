//! Fault matrix and shutdown under load, proven with loadgen's `--verify`:
//! for each intake fault mode, under load, every 2xx the Agent-like client
//! saw matches exactly one byte-identical body at the intake; every failure
//! the relay itself produced is 502, 503 or 504 (statuses the Agent
//! retries); the intake's own 4xx/5xx pass through unchanged; and the relay
//! keeps serving afterwards with its memory back near its baseline. The
//! exact status for each fault, one request at a time, is the table in
//! tests/agent_contract.rs (DESIGN §1); here the same faults run under load.
//! Every scenario runs on both I/O backends and both upstream protocols,
//! except the HTTP/2 faults at the end, which pin `h2`.
//!
//! Needs the workspace's `loadgen` binary beside `fipsrelay`
//! (`cargo build --workspace`; scripts/test.sh does it).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn loadgen_bin() -> PathBuf {
    let p = std::path::Path::new(relay_bin()).parent().unwrap().join("loadgen");
    assert!(p.is_file(), "loadgen missing beside fipsrelay: run `cargo build --workspace` (scripts/test.sh does)");
    p
}

/// Runs a verified closed-loop load against `port` for `secs` and returns loadgen's JSON report.
fn verified_load(dir: &std::path::Path, intake: &Intake, port: u16, secs: &str, conns: usize) -> serde_json::Value {
    load(dir, intake, port, secs, conns, true)
}

/// Load without `--verify`: for faults that stop every TLS handshake with the
/// mock, its control connection included.
fn load(
    dir: &std::path::Path,
    intake: &Intake,
    port: u16,
    secs: &str,
    conns: usize,
    verify: bool,
) -> serde_json::Value {
    let json = dir.join(format!("load-{port}-{}.json", std::process::id() as u64 * 1000 + rand_suffix()));
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["--target", &format!("http://127.0.0.1:{port}/api/v2/series")])
        .args(["--connections", &conns.to_string(), "--duration", secs, "--timeout", "5s", "-q"])
        .args(["--payload", "series", "--body-size", "256-2k"])
        .arg("--json")
        .arg(&json);
    if verify {
        cmd.args(["--verify", &format!("https://{}", intake.addr())]).arg("--verify-ca").arg(&intake.ca_file);
    }
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
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

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Nothing lost, duplicated or corrupted among the bodies answered 2xx.
fn assert_verified(report: &serde_json::Value, what: &str) {
    let v = &report["verify"];
    assert_eq!(v["lost"], 0, "{what}: 2xx bodies missing at the intake: {v}");
    assert_eq!(v["duplicated"], 0, "{what}: bodies duplicated at the intake: {v}");
    assert_eq!(v["corrupted"], 0, "{what}: bodies corrupted at the intake: {v}");
    assert_eq!(v["complete"], true, "{what}: {v}");
}

fn statuses(report: &serde_json::Value) -> Vec<u16> {
    report["status"].as_object().map(|m| m.keys().map(|k| k.parse().unwrap()).collect()).unwrap_or_default()
}

fn rss_kib(pid: i32) -> u64 {
    fipsrelay::procstat::rss_kib(pid)
}

both_backends_both_protocols!(
    fault_matrix_loses_nothing_and_answers_retryable_statuses,
    |io: &str, protocol: Protocol| {
        let dir = TestDir::new();
        let mut intake = Intake::start(dir.path());
        let relay = Relay::start(
            dir.path(),
            io,
            intake.addr(),
            &intake.ca_file,
            &protocol.with(
                "upstream.response_timeout = \"400ms\"\nupstream.connect_timeout = \"300ms\"\nworkers.threads = 1\n\
         health.enabled = true\nhealth.interval = \"200ms\"\nhealth.timeout = \"300ms\"",
            ),
        );
        let port = relay.port(1);
        // Baseline: clean run, then the memory reference.
        let clean = verified_load(dir.path(), &intake, port, "700ms", 8);
        assert_verified(&clean, "no fault");
        assert_eq!(statuses(&clean), vec![202], "{}", clean["status"]);
        assert!(clean["ok"].as_u64().unwrap() > 50, "{}", clean["ok"]);
        let baseline = rss_kib(relay.pid());

        let relay_made = [502u16, 503, 504];
        for (name, behavior) in [
            ("reset after request", Behavior { fault: Fault::ResetAfterRequest, ..Behavior::default() }),
            ("reset mid-request", Behavior { fault: Fault::ResetMidRequest, ..Behavior::default() }),
            ("close mid-answer", Behavior { fault: Fault::CloseMidAnswer, ..Behavior::default() }),
            ("close after head", Behavior { fault: Fault::CloseAfterHead, ..Behavior::default() }),
            (
                "answer slower than response_timeout",
                Behavior { fault: Fault::SlowAnswer(Duration::from_millis(900)), ..Behavior::default() },
            ),
        ] {
            intake.mock.set_behavior(behavior);
            let report = verified_load(dir.path(), &intake, port, "700ms", 8);
            assert_verified(&report, name);
            for s in statuses(&report) {
                assert!(
                    relay_made.contains(&s),
                    "{name}: the relay answered {s}; faults must become 502/503/504: {}",
                    report["status"]
                );
            }
            assert_eq!(report["ok"], 0, "{name}: no 2xx can come out of this fault");
            assert!(report["requests"].as_u64().unwrap() > 0, "{name}: no load ran");
            eprintln!(
                "{io} {name}: status {} errors {} verify {}",
                report["status"], report["errors"], report["verify"]
            );
            if matches!(name, "close after head" | "reset after request" | "reset mid-request") {
                // Nothing of the answer reached the client yet: a clean retryable status, not a cut.
                assert_eq!(report["errors"]["total"], 0, "{name}: {}", report["errors"]);
            }
        }
        // Faults that stop every TLS handshake: nothing reaches the intake, every
        // answer is the relay's retryable status, no client error. The first
        // failed handshakes get 502; they take the only address down (passive
        // marking, health.fall = 3), and from then on the answer is 503 at once.
        // When the fault ends, the active checks bring the address back.
        if protocol.is_h2() {
            // An HTTP/2 connection opened before is still up and would carry
            // every request past these accept-time faults: the intake restarts
            // (same address), so the relay must open new ones.
            let addr = intake.addr();
            intake.mock.shutdown();
            intake.mock = intake.sibling(addr);
        }
        for (name, fault, why) in [
            ("TLS alert during the handshake", Fault::TlsAlert, "is DOWN: TLS handshake failed"),
            ("accept, then never answer", Fault::Blackhole, "is DOWN: TLS handshake timeout after 300ms"),
        ] {
            intake.mock.set_behavior(Behavior { fault, ..Behavior::default() });
            let before = intake.mock.stats().requests;
            let report = load(dir.path(), &intake, port, "700ms", 4, false);
            eprintln!("{io} {name}: status {} errors {}", report["status"], report["errors"]);
            assert!(report["requests"].as_u64().unwrap() > 0, "{name}: no load ran");
            assert_eq!(
                report["status"]["503"],
                report["requests"].as_u64().unwrap() - report["status"]["502"].as_u64().unwrap_or(0),
                "{name}: {}",
                report["status"]
            );
            assert!(statuses(&report).contains(&503), "{name}: the address never went down: {}", report["status"]);
            assert_eq!(report["errors"]["total"], 0, "{name}: {}", report["errors"]);
            assert_eq!(intake.mock.stats().requests, before, "{name}: nothing may reach the intake");
            assert!(relay.log().contains(why), "{name}: no transition line with {why:?}:\n{}", relay.log());
            intake.mock.set_behavior(Behavior::default());
            let up = relay
                .wait_metric("fipsrelay_upstream_address_up{upstream=\"metrics.agent.ddog-gov.com\"", |v| v == 1.0);
            assert_eq!(up, 1.0, "{name}: the address did not come back up:\n{}", relay.log());
            assert!(relay.log().contains("is UP: 2 consecutive checks passed"), "{}", relay.log());
        }
        for status in [500u16, 503, 429, 413, 403, 400] {
            intake.mock.set_behavior(Behavior { status, ..Behavior::default() });
            let report = verified_load(dir.path(), &intake, port, "400ms", 4);
            assert_verified(&report, &format!("intake {status}"));
            assert_eq!(
                statuses(&report),
                vec![status],
                "intake {status} must pass through unchanged: {}",
                report["status"]
            );
            assert_eq!(report["errors"]["total"], 0, "intake {status}: {}", report["errors"]);
        }
        // Still serving, and memory back near where it was.
        intake.mock.set_behavior(Behavior::default());
        let after = verified_load(dir.path(), &intake, port, "700ms", 8);
        assert_verified(&after, "after the faults");
        assert_eq!(statuses(&after), vec![202]);
        relay.wait_idle("metrics");
        let rss = rss_kib(relay.pid());
        assert!(rss < baseline + 16 * 1024, "RSS grew from {baseline} KiB to {rss} KiB over the fault matrix");
        eprintln!("{io}: RSS {baseline} KiB before the faults, {rss} KiB after");
    }
);

both_backends_both_protocols!(sigterm_under_load_leaves_nothing_unanswered, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start_with(
        dir.path(),
        Behavior { latency: Duration::from_millis(30), ..Behavior::default() },
        CipherMode::Default,
    );
    let mut relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let port = relay.port(1);
    let pid = relay.pid();
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            // The stop lands mid-load: once the intake has answered some of it.
            let under_way = eventually(Duration::from_secs(10), || intake.mock.stats().requests >= 20);
            unsafe { libc::kill(pid, libc::SIGTERM) };
            assert!(under_way, "the load did not start");
        });
        verified_load(dir.path(), &intake, port, "2s", 16)
    });
    let status = relay.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    // Every request the relay read was answered: 2xx bodies all at the intake,
    // exactly once; any non-2xx is the relay's 503; the rest never got in
    // (connection refused after the stop).
    assert_verified(&report, "SIGTERM under load");
    assert!(report["ok"].as_u64().unwrap() > 0);
    for s in statuses(&report) {
        assert!(s == 202 || s == 503, "unexpected status {s}: {}", report["status"]);
    }
    let e = &report["errors"];
    assert_eq!(e["timeout"], 0, "a request hung: {e}");
    // Counts agree: what the intake holds equals the 2xx the client saw plus
    // any that were answered otherwise (unconfirmed), nothing else.
    let v = &report["verify"];
    assert_eq!(
        v["mock_bodies"].as_u64().unwrap(),
        v["bodies"].as_u64().unwrap() + v["unconfirmed"].as_u64().unwrap(),
        "{v}"
    );
});

both_backends_both_protocols!(sighup_restart_in_place_under_load_loses_nothing, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let pid = relay.pid();
    let config = relay.log_path.with_extension("toml");
    // An Agent connection that is idle while the restart happens.
    let mut idle = relay.connect(1);
    assert_eq!(idle.request("POST", "/api/v2/series", &[], b"before").status, 202);

    // Under load, a restart-only key changes (workers.threads 2 -> 1) and SIGHUP.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("threads = 2"), "{text}");
    let changed = text.replace("threads = 2", "threads = 1");
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            // The restart lands mid-load: once the intake has answered some of it.
            let under_way = eventually(Duration::from_secs(10), || intake.mock.stats().requests >= 20);
            std::fs::write(&config, changed).unwrap();
            unsafe { libc::kill(pid, libc::SIGHUP) };
            assert!(under_way, "the load did not start");
        });
        verified_load(dir.path(), &intake, relay.port(1), "2500ms", 8)
    });
    assert!(
        eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == 2),
        "{}",
        relay.log()
    );
    let log = relay.log();
    eprintln!("{io}: {} / errors {} / verify {}", report["status"], report["errors"], report["verify"]);
    // Every request answered by the intake, none lost, none refused, no
    // connection dropped: the restart is invisible to the Agent.
    assert_verified(&report, "restart in place");
    assert_eq!(statuses(&report), vec![202], "{}\n{log}", report["status"]);
    assert_eq!(report["errors"]["total"], 0, "{}\n{log}", report["errors"]);
    assert!(report["ok"].as_u64().unwrap() > 50, "{}", report["ok"]);
    let v = &report["verify"];
    assert_eq!(v["mock_bodies"], v["bodies"], "{v}");
    assert!(log.contains("restarting in place to apply: workers.threads changed"), "{log}");
    assert!(log.contains("took over the listeners and idle connections"), "{log}");
    // Same process, new config.
    assert_eq!(relay.pid(), pid);
    unsafe {
        assert_eq!(libc::kill(pid, 0), 0, "the relay is gone");
    }
    assert!(relay.status_page("/").contains("(1 workers)"), "{}", relay.status_page("/"));
    // The idle connection was handed over: it carries the next request.
    // (The mock keeps the first 20,000 records only: the load's go first.)
    intake.mock.reset();
    assert_eq!(idle.request("POST", "/api/v2/series", &[], b"after").status, 202);
    assert!(intake.mock.records().iter().any(|r| r.body_len == 5));
});

/// A real mock-intake process serving `pki`'s leaf on 127.0.0.1:`port`
/// (0: a port the kernel picks); its address, and when it listened.
fn spawn_intake_process(dir: &std::path::Path, port: u16) -> (std::process::Child, SocketAddr, Instant) {
    let mock = std::path::Path::new(relay_bin()).parent().unwrap().join("mock-intake");
    assert!(mock.is_file(), "mock-intake missing beside fipsrelay: run `cargo build --workspace`");
    let mut child = Command::new(mock)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--cert"])
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints "listening on ..." once its socket accepts.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr = line.strip_prefix("listening on ").and_then(|a| a.trim().parse().ok());
    let addr = addr.unwrap_or_else(|| panic!("mock-intake: {line:?}"));
    (child, addr, Instant::now())
}

fn kill9(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// One Agent-like POST on a fresh connection: (status or 0 for a network error, time taken).
fn timed_post(relay: &Relay, n: u64) -> (u16, Duration) {
    let started = Instant::now();
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        relay.request(1, "POST", "/api/v2/series", &[], format!("{{\"blip\":{n}}}").as_bytes()).status
    }))
    .unwrap_or(0);
    (status, started.elapsed())
}

both_backends_both_protocols!(intake_blip_recovers_within_a_second, |io: &str, protocol: Protocol| {
    // A real intake process, killed with SIGKILL and restarted on the same
    // port about 1 s later, twice; a client retrying like the Agent's
    // forwarder (backoff 50 ms doubling to 1 s). Default health settings
    // (interval 10 s, rise 2, fall 3): the address goes down, and panic mode
    // plus the fast down-interval bring it back.
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    pki.write_to(dir.path()).unwrap();
    let (mut intake, addr, _) = spawn_intake_process(dir.path(), 0);
    let port = addr.port();
    let relay = Relay::start(
        dir.path(),
        io,
        addr,
        &dir.path().join("ca.pem"),
        &protocol.with("health.enabled = true\nupstream.connect_timeout = \"2s\""),
    );
    assert_eq!(timed_post(&relay, 0).0, 202);
    let mut n = 1u64;
    for blip in 0..2 {
        kill9(&mut intake);
        let outage_end = Instant::now() + Duration::from_secs(1);
        // During the outage: every answer is a retryable status, in under connect_timeout.
        let mut backoff = Duration::from_millis(50);
        while Instant::now() < outage_end {
            let (status, took) = timed_post(&relay, n);
            n += 1;
            assert!(matches!(status, 502..=504), "blip {blip}: {status} while the intake is down");
            assert!(took < Duration::from_millis(2500), "blip {blip}: {status} took {took:?}");
            // The stimulus: the Agent's backoff between retries.
            std::thread::sleep(backoff.min(outage_end.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        let (child, _, listening) = spawn_intake_process(dir.path(), port);
        intake = child;
        // The Agent's retry loop: backoff from 50 ms, until a 2xx.
        let mut backoff = Duration::from_millis(50);
        let recovered = loop {
            let (status, _) = timed_post(&relay, n);
            n += 1;
            if status == 202 {
                break listening.elapsed();
            }
            assert!(matches!(status, 502..=504), "blip {blip}: {status} after the intake came back");
            assert!(
                listening.elapsed() < Duration::from_secs(15),
                "blip {blip}: no 2xx 15 s after the intake came back\n{}",
                relay.log()
            );
            std::thread::sleep(backoff); // the stimulus: the Agent's backoff
            backoff = (backoff * 2).min(Duration::from_secs(1));
        };
        eprintln!("{io}: blip {blip}: first 2xx {recovered:?} after the intake listened again");
        assert!(
            recovered < Duration::from_secs(1),
            "blip {blip}: 2xx only {recovered:?} after the intake came back\n{}",
            relay.log()
        );
    }
    kill9(&mut intake);
    let log = relay.log();
    assert!(log.contains("is DOWN"), "{log}");
    assert!(
        log.contains("is UP: a request connected in panic mode") || log.contains("is UP: 2 consecutive checks passed"),
        "{log}"
    );
});

both_backends_both_protocols!(one_of_two_addresses_down_fails_no_request, |io: &str, protocol: Protocol| {
    // Two intake addresses; one is killed (a real process) and stays down.
    // Every request still gets 202: a refused connect moves on to the live
    // address before anything of the request is written.
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    pki.write_to(dir.path()).unwrap();
    let (mut first, a, _) = spawn_intake_process(dir.path(), 0);
    let (mut second, b, _) = spawn_intake_process(dir.path(), 0);
    let relay = Relay::start(
        dir.path(),
        io,
        a,
        &dir.path().join("ca.pem"),
        &protocol.with(&format!(
            "upstream.override_addr = \"{a}, {b}\"\nhealth.enabled = true\nupstream.max_idle_per_host = 0"
        )),
    );
    for i in 0..10 {
        assert_eq!(timed_post(&relay, i).0, 202);
    }
    kill9(&mut first);
    for i in 10..60 {
        let (status, _) = timed_post(&relay, i);
        assert_eq!(status, 202, "request {i} with one of two addresses down\n{}", relay.log());
    }
    kill9(&mut second);
});

both_backends_both_protocols!(
    slow_intake_backpressure_bounds_memory_and_blocks_senders,
    |io: &str, protocol: Protocol| {
        // An intake that reads each body at 2 MiB/s while 16 Agents upload
        // 16 MiB each to one worker: the relay must not buffer (its RSS stays
        // near its baseline), the Agents' writes must block (their last byte
        // leaves seconds after the first, not at once), nothing may be
        // corrupted, and another product on the same worker keeps answering.
        const AGENTS: usize = 16;
        const BODY: usize = 16 * 1024 * 1024;
        const RATE: u64 = 2 * 1024 * 1024;
        let dir = TestDir::new();
        let intake = Intake::start_with(
            dir.path(),
            Behavior { fault: Fault::SlowRead(RATE), ..Behavior::default() },
            CipherMode::Default,
        );
        let relay = Relay::start(
            dir.path(),
            io,
            intake.addr(),
            &intake.ca_file,
            &protocol
                .with("workers.threads = 1\nupstream.response_timeout = \"60s\"\nlimits.client_idle_timeout = \"60s\""),
        );
        assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{}").status, 202);
        relay.wait_idle("traces");
        let base = rss_kib(relay.pid());
        let body: Vec<u8> = (0..BODY).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2]).collect();
        let want = body_hash(&body);
        let body = std::sync::Arc::new(body);
        let started = Instant::now();
        let uploads: Vec<_> = (0..AGENTS)
        .map(|_| {
            let (addr, body) = (relay.addr(1), body.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.stream().set_read_timeout(Some(Duration::from_secs(90))).unwrap();
                // A fixed 256 KiB send buffer (no autotuning): how much the
                // kernel can take on the Agent's side does not depend on the
                // host's tcp_wmem (tuning/throughput.conf raises it to 16 MiB).
                let size: libc::c_int = 256 * 1024;
                let fd = std::os::fd::AsRawFd::as_raw_fd(c.stream());
                // SAFETY: a valid socket and a c_int option value.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUF,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                let head = format!(
                    "POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
                );
                std::io::Write::write_all(c.stream(), head.as_bytes()).unwrap();
                for piece in body.chunks(64 * 1024) {
                    std::io::Write::write_all(c.stream(), piece).unwrap();
                }
                let written = started.elapsed();
                let r = read_response(&mut c.reader, false).unwrap();
                (r.status, written, started.elapsed())
            })
        })
        .collect();
        // While the uploads crawl: the relay's memory, and small requests on
        // another product of the same worker.
        let (mut peak, mut small_worst) = (base, Duration::ZERO);
        while !uploads.iter().all(|u| u.is_finished()) {
            assert!(started.elapsed() < Duration::from_secs(120), "uploads did not finish");
            peak = peak.max(rss_kib(relay.pid()));
            let t = Instant::now();
            assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{\"small\":1}").status, 202);
            small_worst = small_worst.max(t.elapsed());
            // Sampling period of the watch above (it ends when the uploads do).
            std::thread::sleep(Duration::from_millis(100));
        }
        let results: Vec<(u16, Duration, Duration)> = uploads.into_iter().map(|u| u.join().unwrap()).collect();
        let mut written: Vec<Duration> = results.iter().map(|r| r.1).collect();
        written.sort();
        let done = results.iter().map(|r| r.2).max().unwrap();
        eprintln!(
        "{io}: {AGENTS} x {} MiB at {} MiB/s each: all answered after {done:?}; Agents' last byte written after {:?} (first) .. {:?} (last); relay RSS {base} KiB -> peak {peak} KiB (+{} KiB); slowest small request on another product {small_worst:?}",
        BODY >> 20,
        RATE >> 20,
        written[0],
        written[AGENTS - 1],
        peak - base
    );
        assert!(results.iter().all(|r| r.0 == 202), "{results:?}");
        // Nothing corrupted: the intake has 16 bodies, each byte-identical.
        let records = intake.mock.records();
        let uploaded: Vec<_> = records.iter().filter(|r| r.path == "/api/v2/series").collect();
        assert_eq!(uploaded.len(), AGENTS);
        assert!(uploaded.iter().all(|r| r.body_len == BODY as u64 && r.body_hash == want), "a body changed on the way");
        // Bounded: 256 MiB went through; the relay held at most a few MiB.
        assert!(peak - base < 24 * 1024, "relay RSS grew by {} KiB: it buffered", peak - base);
        // Blocked: at 2 MiB/s a 16 MiB body takes 8 s to be read; a relay that
        // buffered would take the whole body at once. Kernel socket buffers
        // (a few MiB each way) absorb part of it, never most of it.
        assert!(written[0] > Duration::from_secs(2), "an Agent finished writing after {:?}: not held back", written[0]);
        // Another product on the same worker is not held behind the uploads.
        assert!(small_worst < Duration::from_secs(1), "a small request took {small_worst:?}");
    }
);

/// HTTP/2 faults: HTTP/2 pinned (`h2`, not `auto`), one worker.
const H2: &str = "upstream.protocol = \"h2\"\nworkers.threads = 1\n";

both_backends!(h2_goaway_graceful_is_unseen_abrupt_is_replayed_or_502, |io: &str| {
    // Graceful: streams under way are answered, new ones go to a new
    // connection; the Agent sees only 202. Abrupt (the h2 crate's: GOAWAY
    // with the last stream processed, then the connection closes): streams
    // above it were never processed and are sent again (4 Agent
    // connections keep at most 4 streams open, fewer than the 10 a
    // connection takes, so a replay lands where it is processed); streams
    // processed but not answered get 502, which the Agent retries.
    for (name, fault) in [("graceful GOAWAY", Fault::GoAway(5)), ("abrupt GOAWAY", Fault::GoAwayAbrupt(10))] {
        let graceful = matches!(fault, Fault::GoAway(_));
        let dir = TestDir::new();
        let intake = Intake::with_fault(dir.path(), fault);
        let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, H2);
        let report = verified_load(dir.path(), &intake, relay.port(1), "800ms", 4);
        assert_verified(&report, name);
        let log = relay.log();
        let tail = &log[log.len().saturating_sub(3000)..];
        let seen = statuses(&report);
        if graceful {
            assert_eq!(seen, vec![202], "{name}: {}\n{tail}", report["status"]);
        } else {
            assert!(seen.iter().all(|s| [202, 502].contains(s)), "{name}: {}\n{tail}", report["status"]);
        }
        assert_eq!(report["errors"]["total"], 0, "{name}: {}", report["errors"]);
        let ok = report["ok"].as_u64().unwrap();
        assert!(ok > 30, "{name}: {ok} requests answered 202");
        let conns = intake.mock.connections_accepted();
        assert!(conns >= 3, "{name}: {ok} requests over {conns} connections; each takes 5 or 10");
        let replays = relay.wait_metric_sum("fipsrelay_upstream_h2_replays_total", |_| true);
        eprintln!(
            "{io} {name}: {} answered, {ok} with 202, {conns} intake connections, {replays} replays",
            report["requests"]
        );
    }
});

both_backends!(h2_refused_streams_are_sent_again_within_upstream_retries, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::with_fault(dir.path(), Fault::RefuseFirstStream);
    // Each intake connection refuses its first stream: the request goes
    // again (on the same connection), and the Agent sees a plain 202.
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, H2);
    let mut c = relay.connect(1);
    for i in 0..5 {
        let r = c.request("POST", "/api/v2/series", &[("Content-Type", "application/json")], &payload(3000, i));
        assert_eq!(r.status, 202, "request {i}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(intake.mock.stats().requests, 5, "each request recorded once");
    assert_eq!(intake.mock.connections_accepted(), 1);
    let replays = relay.wait_metric_sum("fipsrelay_upstream_h2_replays_total", |v| v == 1.0);
    assert_eq!(replays, 1.0, "one refused stream, sent once more");
    drop(relay);

    // upstream.retries = 0: the refused stream is the Agent's to retry (502),
    // and the connection carries the next request.
    let dir = TestDir::new();
    let intake = Intake::with_fault(dir.path(), Fault::RefuseFirstStream);
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &format!("{H2}upstream.retries = 0"));
    let mut c = relay.connect(1);
    let r = c.request("POST", "/api/v2/series", &[], &payload(100, 1));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let r = c.request("POST", "/api/v2/series", &[], &payload(100, 2));
    assert_eq!(r.status, 202);
    assert_eq!(intake.mock.stats().requests, 1);
    assert!(relay.log().contains("upstream.retries = 0"), "{}", relay.log());
});

both_backends!(h2_a_silent_connection_is_found_by_its_ping, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::with_fault(dir.path(), Fault::Freeze);
    // Nothing read for idle_timeout / 2 = 1 s: PING; no ACK within
    // connect_timeout: the connection ends, before its idle timeout would
    // (and before a request could stall on it).
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &format!("{H2}upstream.idle_timeout = \"2s\"\nupstream.connect_timeout = \"300ms\"\nupstream.response_timeout = \"1500ms\""),
    );
    let r = relay.request(1, "POST", "/api/v2/series", &[], &payload(100, 1));
    assert_eq!(r.status, 202);
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || relay.log().contains("did not answer a PING within 300ms")),
        "{}",
        relay.log()
    );
    eprintln!("{io}: the silent connection ended {:?} after its answer (idle timeout 2 s)", t.elapsed());
    assert_eq!(relay.wait_metric_sum("fipsrelay_upstream_h2_connections", |v| v == 0.0), 0.0);
    assert!(relay.wait_metric_sum("fipsrelay_upstream_h2_pings_total", |v| v >= 1.0) >= 1.0);
    // The next request opens a new connection and is answered.
    let r = relay.request(1, "POST", "/api/v2/series", &[], &payload(100, 2));
    assert_eq!(r.status, 202);
    assert_eq!(intake.mock.connections_accepted(), 2);

    // A connection that answers its PINGs stays and carries the next request.
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &format!("{H2}upstream.idle_timeout = \"1s\"\nupstream.connect_timeout = \"300ms\""),
    );
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(100, 1)).status, 202);
    // Idle for idle_timeout / 2: the PING goes out, and is answered.
    assert!(relay.wait_metric_sum("fipsrelay_upstream_h2_pings_total", |v| v >= 1.0) >= 1.0);
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(100, 2)).status, 202);
    assert_eq!(intake.mock.connections_accepted(), 1, "the PINGed connection was reused");
});

both_backends!(h2_a_full_stream_queue_answers_503_at_once, |io: &str| {
    let dir = TestDir::new();
    // One stream at a time on the only connection; 2 may wait; the rest: 503.
    let intake = Intake::start_config(dir.path(), |c| c.h2_max_streams = Some(1));
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &format!(
            "{H2}upstream.h2_max_connections = 1\nupstream.h2_max_queued = 2\n\
             upstream.connect_timeout = \"6s\"\nupstream.response_timeout = \"6s\""
        ),
    );
    // The connection is up and the intake's SETTINGS known.
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
    intake.mock.set_behavior(Behavior { fault: Fault::SlowAnswer(Duration::from_millis(1500)), ..Behavior::default() });
    let relay = &relay;
    let answers: Vec<(u16, Duration)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..6)
            .map(|i| {
                s.spawn(move || {
                    // The stimulus: requests arrive one after another, in order.
                    std::thread::sleep(Duration::from_millis(20 * i));
                    let t = Instant::now();
                    let r = relay.request(1, "POST", "/api/v2/series", &[], &payload(100, i));
                    (r.status, t.elapsed())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    eprintln!("{io}: {answers:?}");
    let ok = answers.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((ok, refused.len()), (3, 3), "{answers:?}");
    assert!(refused.iter().all(|(_, t)| *t < Duration::from_millis(1000)), "503 at once: {answers:?}");
    assert!(relay.log().contains("upstream.h2_max_queued = 2"), "{}", relay.log());
});

// A storm of SIGHUPs while a restart in place runs (`systemctl reload` twice
// in a row, say) hits the old process's drain and the new image's start:
// the new image starts with SIGHUP/SIGTERM/SIGINT blocked until its
// handlers are in place, so none of them kills it. One relay stays, it
// restarted once, and the load loses nothing.
both_backends!(a_sighup_storm_during_a_restart_in_place_leaves_one_relay_and_loses_nothing, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    let pid = relay.pid();
    let config = relay.log_path.with_extension("toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("threads = 2"), "{text}");
    let changed = text.replace("threads = 2", "threads = 1");
    let port = relay.port(1);
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            let under_way = eventually(Duration::from_secs(10), || intake.mock.stats().requests >= 20);
            std::fs::write(&config, changed).unwrap();
            // A SIGHUP every 10 ms for 2 s: the old process's drain and the
            // new image's start-up are both hit.
            let storm = Instant::now();
            while storm.elapsed() < Duration::from_secs(2) {
                unsafe { libc::kill(pid, libc::SIGHUP) };
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(under_way, "the load did not start");
        });
        verified_load(dir.path(), &intake, port, "3500ms", 8)
    });
    let log = relay.log();
    let exited = relay.child.as_mut().unwrap().try_wait().unwrap();
    assert!(exited.is_none(), "the relay is gone ({exited:?}):\n{log}");
    assert!(
        eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == 2),
        "one restart in place:\n{}",
        relay.log()
    );
    eprintln!("{io}: {} / errors {} / verify {}", report["status"], report["errors"], report["verify"]);
    assert_verified(&report, "SIGHUP storm");
    assert_eq!(statuses(&report), vec![202], "{}\n{log}", report["status"]);
    assert_eq!(report["errors"]["total"], 0, "{}\n{log}", report["errors"]);
    assert!(relay.status_page("/").contains("(1 workers)"), "{}", relay.status_page("/"));
});
