//! Soak under stress: the Agent mix through the relay for a long time while
//! the intake misbehaves every few seconds, then the checks.
//!
//! Ignored by default (it runs for 30 minutes). Run it with
//!
//! ```sh
//! cargo build --release --workspace     # loadgen beside fipsrelay
//! FIPSRELAY_SOAK_MINUTES=30 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! (`FIPSRELAY_SOAK_MINUTES`, default 30, may be fractional: 2 for a quick
//! shake-out; `FIPSRELAY_SOAK_RATE`, default 100 req/s; without `--release`
//! it runs the debug binaries.)
//!
//! What runs:
//! - the mock intake, in-process, behind the relay (`upstream.protocol` auto,
//!   so HTTP/2 to the mock; epoll; 2 workers; `upstream.response_timeout`
//!   1 s; active health checks on, at their defaults);
//! - `loadgen` as a child process, the Agent mix: open loop at a fixed rate,
//!   random bodies (`--payload raw`) with sizes log-uniform from 512 B to
//!   1 MiB, 4 connections to each of 4 products (metrics, traces, logs,
//!   orchestrator), `--verify` against the mock;
//! - a fault thread cycling every few seconds through: normal; RST_STREAM
//!   after each request (`reset-after-request`); answers 1.5 s late, past the
//!   1 s response timeout (`slow:1500ms`, 504s); a restart of the intake
//!   (shutdown, 1.5 s down, a new mock at the same address); a restart
//!   straight into graceful GOAWAY every 5 streams; a restart straight into
//!   abrupt GOAWAY every 10 streams. Each fault lasts 1.5 s with 3 s of
//!   normal between. (The GOAWAY faults count streams per connection, so
//!   they need fresh connections: hence the restart in front of them.)
//! - every 30 s, the relay's RSS and its log's line count.
//!
//! A restart loses the mock's records, so `--verify` does not talk to the
//! mock directly: it talks to a small TLS front in this test that answers
//! `/mock/reset` and `/mock/digest` for every generation of the mock
//! together (the digests of the stopped ones merged with the live one's).
//!
//! The checks, at the end: every body answered 2xx is at the intake exactly
//! once (lost = duplicated = corrupted = 0, the comparison complete); no
//! 4xx (the mock never answers one here, so any would be the relay's); RSS
//! grows less than 10 MiB from the end of the warm-up (2 minutes, or a third
//! of a shorter run) to the end; no minute has 300 log lines or more. The
//! summary table is printed before the checks, whatever they find.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loadgen::mock::MockDigest;

const SAMPLE_EVERY: Duration = Duration::from_secs(30);
const NORMAL: Duration = Duration::from_secs(3);
const FAULT: Duration = Duration::from_millis(1500);
const SLOW: Duration = Duration::from_millis(1500);
const RESPONSE_TIMEOUT: &str = "1s";
const RSS_GROWTH_MAX_KIB: u64 = 10 * 1024;
/// The log's bound. Failures are summarised, so the lines follow the fault
/// episodes, not the requests: each episode starts every key it touches
/// (worker × product × cause: 2 × 4 × 4 here) with one full line and a
/// summary 5 s later, about 200 lines a minute at this fault cycle (the
/// first 30-minute run: 206 on average, 228 at worst; set at 200 before it,
/// raised to 300 after it, see docs/testing.md). Per-request lines, as
/// before the summaries, were 870 a minute at the same load.
const LOG_LINES_PER_MINUTE_MAX: usize = 300;
/// Relay port offsets and paths: metrics, traces, logs, orchestrator.
const PRODUCTS: [(u16, &str); 4] =
    [(1, "/api/v2/series"), (2, "/api/v0.2/traces"), (5, "/api/v2/logs"), (12, "/api/v2/orch")];
const CONNECTIONS_PER_PRODUCT: usize = 4;

fn loadgen_bin() -> PathBuf {
    let p = std::path::Path::new(relay_bin()).parent().unwrap().join("loadgen");
    assert!(
        p.is_file(),
        "loadgen missing beside fipsrelay: run `cargo build --workspace` (with --release for a release run)"
    );
    p
}

fn env_f64(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Every generation of the mock intake: the live one, and the merged digest
/// of those stopped by a restart.
struct Generations {
    intake: Intake,
    retired: MockDigest,
    retired_connections: u64,
    restarts: u64,
}

impl Generations {
    fn digest(&self) -> MockDigest {
        let live = self.intake.mock.digest();
        let mut all = self.retired.clone();
        all.requests += live.requests;
        all.digest.merge(&live.digest);
        all
    }

    fn reset(&mut self) {
        self.intake.mock.reset();
        self.retired = MockDigest::default();
        self.retired_connections = 0;
    }

    /// Stops the live mock, keeps its digest, waits `down`, and starts a new
    /// one at the same address with `behavior`.
    fn restart(&mut self, down: Duration, behavior: Behavior) {
        let addr = self.intake.addr();
        self.intake.mock.shutdown();
        let old = self.intake.mock.digest();
        self.retired.requests += old.requests;
        self.retired.digest.merge(&old.digest);
        self.retired_connections += self.intake.mock.connections_accepted();
        std::thread::sleep(down);
        let mut last = None;
        for _ in 0..100 {
            let mut cfg =
                MockConfig::new(addr, self.intake.pki.leaf_cert_pem.clone(), self.intake.pki.leaf_key_pem.clone());
            cfg.behavior = behavior.clone();
            match MockIntake::start(cfg) {
                Ok(mock) => {
                    self.intake.mock = mock;
                    self.restarts += 1;
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("could not restart the mock intake at {addr}: {last:?}");
    }
}

/// The `--verify` endpoint: a TLS server with the mock's certificate that
/// answers `POST /mock/reset` and `GET /mock/digest` for all generations.
fn start_verify_front(gens: Arc<Mutex<Generations>>) -> SocketAddr {
    let (tls, listener) = {
        let g = gens.lock().unwrap();
        let cfg = MockConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            g.intake.pki.leaf_cert_pem.clone(),
            g.intake.pki.leaf_key_pem.clone(),
        );
        let mut tls = loadgen::mock::server_config(&cfg).unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(tls), TcpListener::bind("127.0.0.1:0").unwrap())
    };
    let addr = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name("verify-front".into())
        .spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                if let Err(e) = serve_control(tcp, &tls, &gens) {
                    eprintln!("verify front: {e}");
                }
            }
        })
        .unwrap();
    addr
}

fn serve_control(
    tcp: std::net::TcpStream,
    tls: &Arc<rustls::ServerConfig>,
    gens: &Mutex<Generations>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ServerConnection::new(Arc::clone(tls)).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the request head ended"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("POST", "/mock/reset") => {
            gens.lock().unwrap().reset();
            ("200 OK", "{}".to_string())
        }
        ("GET", "/mock/digest") => ("200 OK", serde_json::to_string(&gens.lock().unwrap().digest()).unwrap()),
        _ => ("404 Not Found", "{}".to_string()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(answer.as_bytes())?;
    s.conn.send_close_notify();
    s.flush()?;
    Ok(())
}

#[derive(Default, Debug)]
struct FaultCounts {
    cycles: u64,
    reset: u64,
    slow: u64,
    restart: u64,
    goaway: u64,
    goaway_abrupt: u64,
}

/// Cycles through the faults until `stop`.
fn fault_loop(gens: &Mutex<Generations>, stop: &AtomicBool, counts: &Mutex<FaultCounts>) {
    let set = |b: Behavior| gens.lock().unwrap().intake.mock.set_behavior(b);
    let fault = |f: Fault| Behavior { fault: f, ..Behavior::default() };
    // Sleeps in small steps; false once told to stop.
    let pause = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !stop.load(Ordering::Relaxed)
    };
    'cycles: loop {
        for step in 0..5 {
            if !pause(NORMAL) {
                break 'cycles;
            }
            match step {
                0 => {
                    set(fault(Fault::ResetAfterRequest));
                    counts.lock().unwrap().reset += 1;
                    pause(FAULT);
                }
                1 => {
                    set(fault(Fault::SlowAnswer(SLOW)));
                    counts.lock().unwrap().slow += 1;
                    pause(FAULT);
                }
                2 => {
                    gens.lock().unwrap().restart(FAULT, Behavior::default());
                    counts.lock().unwrap().restart += 1;
                }
                3 => {
                    gens.lock().unwrap().restart(Duration::ZERO, fault(Fault::GoAway(5)));
                    counts.lock().unwrap().goaway += 1;
                    pause(FAULT);
                }
                _ => {
                    gens.lock().unwrap().restart(Duration::ZERO, fault(Fault::GoAwayAbrupt(10)));
                    counts.lock().unwrap().goaway_abrupt += 1;
                    pause(FAULT);
                }
            }
            set(Behavior::default());
        }
        counts.lock().unwrap().cycles += 1;
    }
    set(Behavior::default());
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    log_lines: usize,
}

fn log_lines(relay: &Relay) -> usize {
    relay.log().lines().count()
}

/// The log's messages without their timestamps and numbers, most frequent first.
fn log_kinds(log: &str) -> Vec<(usize, String)> {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines() {
        // "2026-...Z  INFO target: message": drop the time.
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or(line);
        let shape: String = rest
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect::<String>()
            .chars()
            .take(160)
            .collect();
        *kinds.entry(shape).or_default() += 1;
    }
    let mut v: Vec<(usize, String)> = kinds.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by_key(|a| std::cmp::Reverse(a.0));
    v
}

#[test]
#[ignore = "a soak: FIPSRELAY_SOAK_MINUTES (default 30) of load and faults; run with --ignored --nocapture"]
fn soak_agent_mix_under_intake_faults() {
    let minutes = env_f64("FIPSRELAY_SOAK_MINUTES", 30.0);
    let rate = env_f64("FIPSRELAY_SOAK_RATE", 100.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    assert!(duration >= Duration::from_secs(30), "FIPSRELAY_SOAK_MINUTES={minutes}: at least 0.5");
    let warmup = Duration::from_secs(120).min(duration / 3);

    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut relay = Relay::start(
        dir.path(),
        "epoll",
        intake.addr(),
        &intake.ca_file,
        &format!(
            "upstream.protocol = \"auto\"\nworkers.threads = 2\nupstream.response_timeout = \"{RESPONSE_TIMEOUT}\"\n\
             health.enabled = true"
        ),
    );
    let ca_file = intake.ca_file.clone();
    let gens = Arc::new(Mutex::new(Generations {
        intake,
        retired: MockDigest::default(),
        retired_connections: 0,
        restarts: 0,
    }));
    let front = start_verify_front(Arc::clone(&gens));

    let json = dir.path().join("soak.json");
    let mut cmd = Command::new(loadgen_bin());
    for (offset, path) in PRODUCTS {
        cmd.args(["--target", &format!("http://127.0.0.1:{}{path}", relay.port(offset))]);
    }
    cmd.args(["--connections", &(PRODUCTS.len() * CONNECTIONS_PER_PRODUCT).to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--payload", "raw", "--sizes", "log-uniform:512..1m", "--seed", "1"])
        .args(["--duration", &format!("{}s", duration.as_secs())])
        .args(["--timeout", "10s", "-q"])
        .args(["--verify", &format!("https://{front}")])
        .arg("--verify-ca")
        .arg(&ca_file)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("soak: {minutes} min at {rate} req/s; relay {} (pid {}); loadgen {cmd:?}", relay.addr(1), relay.pid());

    let started = Instant::now();
    let mut samples = vec![Sample {
        at: Duration::ZERO,
        rss_kib: fipsrelay::procstat::rss_kib(relay.pid()),
        log_lines: log_lines(&relay),
    }];
    let mut child = cmd.spawn().expect("spawn loadgen");
    // Collect loadgen's output on threads (its pipes must not fill).
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(FaultCounts::default()));
    let faults = {
        let (gens, stop, counts) = (Arc::clone(&gens), Arc::clone(&stop), Arc::clone(&counts));
        std::thread::spawn(move || fault_loop(&gens, &stop, &counts))
    };
    // Faults stop 15 s before the load does: the run ends on a healthy intake.
    let faults_until = duration.saturating_sub(Duration::from_secs(15));
    let mut next_sample = SAMPLE_EVERY;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() >= faults_until {
            stop.store(true, Ordering::Relaxed);
        }
        if started.elapsed() >= next_sample {
            let s = Sample {
                at: started.elapsed(),
                rss_kib: fipsrelay::procstat::rss_kib(relay.pid()),
                log_lines: log_lines(&relay),
            };
            eprintln!("soak: {:>6.0} s  RSS {} KiB  log lines {}", s.at.as_secs_f64(), s.rss_kib, s.log_lines);
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        assert!(started.elapsed() < duration + Duration::from_secs(300), "loadgen did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    faults.join().unwrap();
    let elapsed = started.elapsed();
    samples.push(Sample {
        at: elapsed,
        rss_kib: fipsrelay::procstat::rss_kib(relay.pid()),
        log_lines: log_lines(&relay),
    });
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("loadgen wrote no report ({status}):\n{stdout}\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let relay_alive = relay.child.as_mut().unwrap().try_wait().unwrap().is_none();
    let replays = relay.wait_metric_sum("fipsrelay_upstream_h2_replays_total", |_| true);
    let log = relay.log();
    let (restarts, connections) = {
        let g = gens.lock().unwrap();
        (g.restarts, g.retired_connections + g.intake.mock.connections_accepted())
    };
    let counts = counts.lock().unwrap();

    // The summary, whatever the checks find.
    let v = &report["verify"];
    println!("\n=== soak summary ===");
    println!(
        "duration          {:.1} min (asked {minutes} min; loadgen measured {} s)",
        elapsed.as_secs_f64() / 60.0,
        report["duration_s"]
    );
    println!("load              open loop {rate} req/s, {} connections over {} products, raw bodies log-uniform 512 B..1 MiB, seed 1", PRODUCTS.len() * CONNECTIONS_PER_PRODUCT, PRODUCTS.len());
    println!("relay             epoll, 2 workers, upstream.protocol auto (HTTP/2 to the mock), response_timeout {RESPONSE_TIMEOUT}, health checks on");
    println!("loadgen exit      {status}");
    println!(
        "requests          {} ({} req/s), answered {}, 2xx {}",
        report["requests"], report["req_per_s"], report["responses"], report["ok"]
    );
    println!("status counts     {}", report["status"]);
    println!("client errors     {}", report["errors"]);
    println!("sent              {} bytes ({} MB/s)", report["sent_bytes"], report["sent_mb_per_s"]);
    println!("latency (us)      {}", report["latency_us"]);
    println!("send lag (us)     {} unreliable={}", report["send_lag_us"], report["send_lag_unreliable"]);
    println!("verify            {v}");
    println!("faults applied    {counts:?}");
    println!("intake            {restarts} restarts, {connections} TLS connections accepted in all; relay h2 replays {replays}");
    println!("relay alive       {relay_alive}");
    println!("{:>8} {:>10} {:>10} {:>10} {:>12}", "t (s)", "RSS KiB", "dRSS KiB", "log lines", "lines/min");
    let warm = samples.iter().filter(|s| s.at >= warmup).map(|s| s.rss_kib).next().unwrap_or(samples[0].rss_kib);
    for (i, s) in samples.iter().enumerate() {
        let per_min = if i == 0 {
            String::new()
        } else {
            let p = &samples[i - 1];
            let secs = (s.at - p.at).as_secs_f64().max(1.0);
            format!("{:.0}", (s.log_lines - p.log_lines) as f64 * 60.0 / secs)
        };
        println!(
            "{:>8.0} {:>10} {:>+10} {:>10} {:>12}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.rss_kib as i64 - warm as i64,
            s.log_lines,
            per_min
        );
    }
    let last = samples.last().unwrap();
    let peak_after_warm = samples.iter().filter(|s| s.at >= warmup).map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "RSS               {} KiB at start, {warm} KiB at the end of the warm-up ({} s), peak after it {peak_after_warm} KiB, {} KiB at the end",
        samples[0].rss_kib,
        warmup.as_secs(),
        last.rss_kib
    );
    // Log lines per minute: over each window of 60 s (two samples apart).
    let mut worst_minute = 0usize;
    for w in samples.windows(3) {
        worst_minute = worst_minute.max(w[2].log_lines - w[0].log_lines);
    }
    if samples.len() < 3 {
        worst_minute = last.log_lines;
    }
    println!(
        "log               {} lines in {:.1} min ({:.1}/min on average), worst 60 s window {worst_minute}",
        last.log_lines,
        elapsed.as_secs_f64() / 60.0,
        last.log_lines as f64 * 60.0 / elapsed.as_secs_f64()
    );
    println!("log lines by kind (digits as #), most frequent first:");
    for (n, kind) in log_kinds(&log).iter().take(25) {
        println!("  {n:>6}  {kind}");
    }
    println!("loadgen stdout:\n{stdout}");
    if !stderr.trim().is_empty() {
        println!("loadgen stderr:\n{stderr}");
    }

    // The checks, all at once.
    let mut failed = Vec::new();
    if !relay_alive {
        failed.push("the relay exited".to_string());
    }
    if v.is_null() {
        failed.push("no verification in loadgen's report".to_string());
    } else {
        for k in ["lost", "duplicated", "corrupted"] {
            if v[k] != 0 {
                failed.push(format!("verify: {k} = {}", v[k]));
            }
        }
        if v["complete"] != true {
            failed.push(format!("verify: comparison incomplete: {v}"));
        }
    }
    if report["ok"].as_u64().unwrap_or(0) == 0 {
        failed.push("no request answered 2xx".to_string());
    }
    let fours: Vec<String> = report["status"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.parse::<u16>().is_ok_and(|s| (400..500).contains(&s)))
                .map(|(k, n)| format!("{k}: {n}"))
                .collect()
        })
        .unwrap_or_default();
    if !fours.is_empty() {
        failed.push(format!("relay-made 4xx: {}", fours.join(", ")));
    }
    if last.rss_kib > warm + RSS_GROWTH_MAX_KIB {
        failed.push(format!(
            "RSS grew {} KiB after the warm-up ({warm} -> {} KiB; bound {RSS_GROWTH_MAX_KIB} KiB)",
            last.rss_kib - warm,
            last.rss_kib
        ));
    }
    if worst_minute >= LOG_LINES_PER_MINUTE_MAX {
        failed.push(format!("{worst_minute} log lines in one minute (bound {LOG_LINES_PER_MINUTE_MAX})"));
    }
    if failed.is_empty() {
        println!("soak: all checks passed");
    } else {
        let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("soak failed:\n- {}\nrelay log (last 60 lines):\n{}", failed.join("\n- "), tail.join("\n"));
    }
}
