//! fipsrelay side by side with HAProxy configured like the Datadog Agent FIPS
//! proxy, on this machine, in one run. Layout: the proxy under test alone on
//! CPU 1 (taskset), loadgen and the mock intake on CPU 0; one worker /
//! `nbthread 1`. The contenders: fipsrelay on each I/O backend this host
//! can run (`--io auto` for `auto` only), `--baseline PATH` another
//! fipsrelay build on the same backends (an A/B of a change, in the same
//! run), and HAProxy. Each workload is measured `--reps` times (default 3),
//! interleaved (every contender once, then again, …); medians are reported
//! with CPU split into user + sys and each contender's ratio to HAProxy, and
//! the whole result is written as JSON.
//!
//! A second rig cross-checks the closed-loop rows with tools nobody here
//! wrote: `wrk` (Debian) as the Agent and nginx-full as the TLS intake
//! (`echo_read_request_body`, then 202), wrk and nginx on CPU 0, the proxy
//! alone on CPU 1 as before. It also has the floor row: HAProxy relaying
//! plaintext to nginx's plaintext port (no TLS at all). Both rigs' ratios
//! are printed.
//!
//! The Agent-shaped rows (docs/performance.md, "Agent-shaped rows"): the
//! Agent mix, an open loop at 250 req/s over 4 connections of random bodies
//! whose sizes are log-uniform from 512 B to 1 MiB (and to the 2.5 MiB cap),
//! seeded so every contender gets the same sizes, verified body by body at
//! the mock (`--verify`); on the wrk rig the same distribution, paced by the
//! script's `delay()`. 1 MiB bodies in a closed loop over 16 connections.
//! And the proxy at rest: with 0, then 8 kept-alive Agent connections (each
//! sent one request), the whole process's wake-ups (context switches) and CPU
//! per second over `--idle-secs` (default 10, 5 with `--quick`) after a
//! warm-up, on both intakes. Every row reports wake-ups per request beside
//! CPU and system calls.
//!
//! Over a long path: the Agent mix at 50 req/s over 8 connections with the
//! proxy reaching the intake through loadgen's `wanlink` (20 ms each way, a
//! 40 ms round trip; only the delay is emulated, docs/testing.md), on both
//! rigs; its p50/p99 per request are the figures (docs/performance.md,
//! "Over a WAN").
//!
//! Run: `benches/compare.sh` (installs HAProxy, wrk and nginx-full when
//! missing), or
//! `cargo bench --bench compare -- [--quick] [--secs N] [--reps N] [--json FILE] [--no-external]
//!  [--io auto|both] [--baseline PATH] [--only SUBSTRING] [--protocol http1|h2] [--idle-secs N]`;
//! `--only` keeps the workloads whose name holds SUBSTRING (e.g. `"1 KiB
//! closed"`, `"Agent mix"`, `idle`), `--protocol` the fipsrelay rows of one
//! upstream protocol.

mod harness;

use harness::*;
use loadgen::load::BodySize;
use std::path::PathBuf;
use std::time::Duration;

const WORKLOADS: &[Workload] = &[
    Workload { name: "1 KiB closed loop, 64 conns", body: "1k", connections: 64, rate: None },
    Workload { name: "64 KiB closed loop, 64 conns", body: "64k", connections: 64, rate: None },
    Workload { name: "1 KiB at 1k req/s", body: "1k", connections: 16, rate: Some(1_000) },
    Workload { name: "1 KiB at 20k req/s", body: "1k", connections: 64, rate: Some(20_000) },
    // The Agent's shape (DESIGN §1): a few serial connections, idle between
    // bodies of a few hundred bytes to the 2.5 MiB cap, log-uniform.
    Workload {
        name: AGENT_MIX_1M,
        body: "log-uniform:512..1m",
        connections: AGENT_MIX_CONNS,
        rate: Some(AGENT_MIX_RATE),
    },
    Workload {
        name: AGENT_MIX_2M5,
        body: "log-uniform:512..2560k",
        connections: AGENT_MIX_CONNS,
        rate: Some(AGENT_MIX_RATE),
    },
    Workload { name: "1 MiB closed loop, 16 conns", body: "1m", connections: 16, rate: None },
];

/// The Agent mix over a 40 ms round trip: latency is the figure.
const AGENT_MIX_WAN: Workload = Workload {
    name: "Agent mix 50 req/s 512 B–1 MiB over 40 ms RTT",
    body: "log-uniform:512..1m",
    connections: WAN_CONNS,
    rate: Some(WAN_RATE),
};
/// One-way delay of the long path (`wanlink --delay`).
const WAN_DELAY: &str = "20ms";
const WAN_RATE: u64 = 50;
/// Enough that a request rarely waits for a free connection at 50 req/s
/// and ~100 ms per request.
const WAN_CONNS: usize = 8;

const AGENT_MIX_1M: &str = "Agent mix 250 req/s 512 B–1 MiB";
const AGENT_MIX_2M5: &str = "Agent mix 250 req/s 512 B–2.5 MiB";
const AGENT_MIX_RATE: u64 = 250;
const AGENT_MIX_CONNS: usize = 4;
/// Kept-alive Agent connections of the second idle row.
const IDLE_AGENT_CONNS: usize = 8;

/// A row of the wrk rig.
enum WrkLoad {
    /// Closed loop: body bytes, connections.
    Fixed(usize, usize),
    /// Paced: sizes, req/s, connections.
    Mix(BodySize, u64, usize),
    /// Paced, the proxy reaching nginx through `wanlink` (WAN_DELAY each way).
    MixWan(BodySize, u64, usize),
}

fn main() {
    let quick = has_flag("--quick");
    let secs: u64 = arg_value("--secs").and_then(|v| v.parse().ok()).unwrap_or(if quick { 3 } else { 10 });
    let warmup: u64 = if quick { 1 } else { 2 };
    let reps: usize = arg_value("--reps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let haproxy = PathBuf::from(arg_value("--haproxy").unwrap_or_else(|| "/usr/sbin/haproxy".into()));
    if !haproxy.exists() {
        eprintln!(
            "HAProxy not found at {}: run benches/compare.sh (installs it) or pass --haproxy PATH",
            haproxy.display()
        );
        std::process::exit(2);
    }
    let version = std::process::Command::new(&haproxy)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (proxy_cpu, load_cpu) = if cpus >= 2 { (Some(1), Some(0)) } else { (None, None) };

    // The contenders, in the order each repetition runs them.
    let backends: Vec<&str> = match arg_value("--io").as_deref() {
        Some("auto") => vec!["auto"],
        _ if fipsrelay::io::probe_uring().is_ok() => vec!["uring", "epoll"],
        _ => vec!["epoll"],
    };
    let baseline = arg_value("--baseline").map(PathBuf::from);
    if let Some(b) = &baseline {
        assert!(b.exists(), "--baseline {}: no such binary", b.display());
    }
    // `--protocol http1|h2`: only the fipsrelay rows of that protocol.
    let protocol = arg_value("--protocol");
    let (http1, h2) = match protocol.as_deref() {
        Some("http1") => (true, false),
        Some("h2") => (false, true),
        Some(other) => panic!("--protocol {other}: use http1 or h2"),
        None => (true, true),
    };
    let mut contenders: Vec<Contender> = Vec::new();
    let mut relays: Vec<(String, PathBuf)> = vec![("fipsrelay".into(), bins.relay.clone())];
    if let Some(b) = &baseline {
        relays.push(("baseline".into(), b.clone()));
    }
    for (name, bin) in relays.iter().filter(|_| http1) {
        for &io in &backends {
            contenders.push(Contender { label: format!("{name} {io}"), kind: Kind::Relay(bin.clone(), io) });
        }
    }
    // HTTP/2 to the intake (the mock and nginx offer h2 by ALPN; HAProxy and
    // the HTTP/1.1 rows do not ask for it).
    for (name, bin) in relays.iter().filter(|_| h2) {
        for &io in &backends {
            let with_h2: &'static str = match io {
                "uring" => "uring+h2",
                "epoll" => "epoll+h2",
                _ => "auto+h2",
            };
            contenders.push(Contender { label: format!("{name} {io} h2"), kind: Kind::Relay(bin.clone(), with_h2) });
        }
    }
    contenders.push(Contender { label: "haproxy".into(), kind: Kind::Haproxy });

    println!("# fipsrelay vs HAProxy — {}", machine());
    println!("# {version}; fipsrelay {} ({})", env!("CARGO_PKG_VERSION"), fipsrelay::crypto::module_description());
    if let Some(b) = &baseline {
        println!("# baseline: {}", b.display());
    }
    println!("# proxy on CPU {proxy_cpu:?}, loadgen + mock intake on CPU {load_cpu:?}; {secs}s runs after {warmup}s warm-up, {reps} reps interleaved, medians; CPU µs/req as total (user+sys)");
    println!("# conns: fipsrelay's intake connections at the end of the window; fr/w, req/w: over HTTP/2, frames and requests (streams) per TLS write");
    println!("# wake/req: the proxy's context switches (voluntary + involuntary, all threads) per request; Agent mix rows: loadgen --verify against the mock, same seed (same sizes) for every contender");
    let mock = start_mock(&bins, dir.path(), load_cpu);
    let mut json_rows = Vec::new();
    let mut idle: Vec<u64> = vec![0; contenders.len()];
    let header = |extra: &str| {
        println!(
            "{:<34} {:>10} {:>18} {:>9} {:>9} {:>10} {:>9} {:>14} {:>8} {:>6} {:>5} {:>5}",
            "workload / proxy",
            "req/s",
            "CPU µs/req",
            "p50 µs",
            "p99 µs",
            extra,
            "RSS MiB",
            "syscalls/req",
            "wake/req",
            "conns",
            "fr/w",
            "req/w"
        )
    };
    let only = arg_value("--only");
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if WORKLOADS.iter().any(|w| wanted(w.name)) {
        println!();
        header("p99.9 µs");
    }
    for w in WORKLOADS.iter().filter(|w| wanted(w.name)) {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for _ in 0..reps {
            for (i, c) in contenders.iter().enumerate() {
                let target = match &c.kind {
                    Kind::Relay(bin, io) => start_relay_bin(bin, dir.path(), mock.addr, &mock.ca, proxy_cpu, 1, io),
                    _ => start_haproxy(&haproxy, dir.path(), &mock, proxy_cpu, 1),
                };
                std::thread::sleep(std::time::Duration::from_millis(300));
                idle[i] = idle[i].max(rss_kib(target.proc.pid()));
                let verify = w.name.starts_with("Agent mix").then_some(&mock);
                samples[i].push(run_load_verified(&bins, dir.path(), &target, w, secs, warmup, load_cpu, verify));
            }
        }
        let medians: Vec<(String, Sample)> =
            contenders.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median(s))).collect();
        json_rows.push(print_rows(w.name, &medians, true));
    }
    // The long path: the same contenders behind a WAN link to the mock.
    if wanted(AGENT_MIX_WAN.name) {
        let w = &AGENT_MIX_WAN;
        let link = start_wanlink(&bins, mock.addr, WAN_DELAY, load_cpu);
        if !WORKLOADS.iter().any(|w| wanted(w.name)) {
            println!();
            header("p99.9 µs");
        }
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for _ in 0..reps {
            for (i, c) in contenders.iter().enumerate() {
                let target = match &c.kind {
                    Kind::Relay(bin, io) => start_relay_bin(bin, dir.path(), link.addr, &mock.ca, proxy_cpu, 1, io),
                    _ => start_haproxy_to(&haproxy, dir.path(), link.addr, &mock.ca, proxy_cpu, 1),
                };
                std::thread::sleep(std::time::Duration::from_millis(300));
                samples[i].push(run_load_verified(&bins, dir.path(), &target, w, secs, warmup, load_cpu, Some(&mock)));
            }
        }
        let medians: Vec<(String, Sample)> =
            contenders.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median(s))).collect();
        println!("# {}: wanlink adds {WAN_DELAY} each way between the proxy and the mock", w.name);
        json_rows.push(print_rows(w.name, &medians, true));
    }
    let idle_line: Vec<String> =
        contenders.iter().zip(&idle).map(|(c, k)| format!("{} {:.1} MiB", c.label, *k as f64 / 1024.0)).collect();
    if !idle_line.is_empty() && WORKLOADS.iter().any(|w| wanted(w.name)) {
        println!("idle RSS: {}", idle_line.join(", "));
    }

    // The proxies at rest, in front of the mock.
    let idle_secs: u64 = arg_value("--idle-secs").and_then(|v| v.parse().ok()).unwrap_or(if quick { 5 } else { 10 });
    let idle_window = Duration::from_secs(idle_secs);
    let idle_warmup = Duration::from_secs(warmup);
    let mut idle_rows = Vec::new();
    // At rest, HAProxy also as the FIPS Proxy ships it: with the health
    // checks of its configuration (the other rows' HAProxy has none, while
    // fipsrelay runs its default checks everywhere).
    let mut idle_contenders = contenders.clone();
    idle_contenders.push(Contender { label: "haproxy+checks".into(), kind: Kind::HaproxyChecks });
    for conns in [0, IDLE_AGENT_CONNS] {
        let name = idle_name(conns, "");
        if !wanted(&name) {
            continue;
        }
        let mut samples: Vec<Vec<IdleSample>> = vec![Vec::new(); idle_contenders.len()];
        for _ in 0..reps {
            for (i, c) in idle_contenders.iter().enumerate() {
                let target = match &c.kind {
                    Kind::Relay(bin, io) => start_relay_bin(bin, dir.path(), mock.addr, &mock.ca, proxy_cpu, 1, io),
                    Kind::HaproxyChecks => {
                        start_haproxy_with_checks_to(&haproxy, dir.path(), mock.addr, &mock.ca, proxy_cpu)
                    }
                    _ => start_haproxy(&haproxy, dir.path(), &mock, proxy_cpu, 1),
                };
                samples[i].push(measure_idle(&target, conns, idle_warmup, idle_window, dir.path()));
            }
        }
        let medians: Vec<(String, IdleSample)> =
            idle_contenders.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median_idle(s))).collect();
        idle_rows.push(print_idle(&name, &medians, idle_secs, warmup));
    }
    drop(mock);

    // The external rig: wrk → proxy → nginx (TLS, reads the whole body), and
    // the floor: HAProxy plaintext → nginx plaintext.
    let wrk_loads: Vec<(&str, WrkLoad)> = vec![
        ("1 KiB closed loop, 64 conns (wrk)", WrkLoad::Fixed(1024, 64)),
        ("64 KiB closed loop, 64 conns (wrk)", WrkLoad::Fixed(65536, 64)),
        ("1 MiB closed loop, 16 conns (wrk)", WrkLoad::Fixed(1 << 20, 16)),
        (
            "Agent mix 250 req/s 512 B–1 MiB (wrk, paced)",
            WrkLoad::Mix(BodySize::log_uniform(512, 1 << 20), AGENT_MIX_RATE, AGENT_MIX_CONNS),
        ),
        (
            "Agent mix 250 req/s 512 B–2.5 MiB (wrk, paced)",
            WrkLoad::Mix(BodySize::log_uniform(512, 2560 << 10), AGENT_MIX_RATE, AGENT_MIX_CONNS),
        ),
        (
            "Agent mix 50 req/s 512 B–1 MiB over 40 ms RTT (wrk, paced)",
            WrkLoad::MixWan(BodySize::log_uniform(512, 1 << 20), WAN_RATE, WAN_CONNS),
        ),
    ];
    let wrk_loads: Vec<(&str, WrkLoad)> = wrk_loads.into_iter().filter(|(name, _)| wanted(name)).collect();
    let idle_external: Vec<usize> =
        [0, IDLE_AGENT_CONNS].into_iter().filter(|&n| wanted(&idle_name(n, " (nginx)"))).collect();
    let mut external_rows = Vec::new();
    let mut external_idle_rows = Vec::new();
    let wrk_ok = std::path::Path::new("/usr/bin/wrk").exists();
    if has_flag("--no-external") {
        println!("# external rig skipped (--no-external)");
    } else if wrk_loads.is_empty() && idle_external.is_empty() {
        // --only left nothing on this rig.
    } else if !wrk_ok || nginx_bin().is_none() || echo_module().is_none() {
        println!("# external rig skipped: needs /usr/bin/wrk and nginx-full's echo module (benches/compare.sh installs them)");
    } else {
        let tls = dir.path().join("tls");
        let nginx = start_nginx_intake(dir.path(), &tls, load_cpu);
        let mut external = contenders.clone();
        external.push(Contender { label: "haproxy plain (floor)".into(), kind: Kind::HaproxyPlain });
        // The long path to nginx, when a row needs it.
        let link = wrk_loads
            .iter()
            .any(|(_, l)| matches!(l, WrkLoad::MixWan(..)))
            .then(|| start_wanlink(&bins, nginx.addr, WAN_DELAY, load_cpu));
        let start_at = |c: &Contender, wan: bool| {
            let addr = match (&link, wan) {
                (Some(l), true) => l.addr,
                _ => nginx.addr,
            };
            match &c.kind {
                Kind::Relay(bin, io) => start_relay_bin(bin, dir.path(), addr, &nginx.ca, proxy_cpu, 1, io),
                Kind::Haproxy => start_haproxy_to(&haproxy, dir.path(), addr, &nginx.ca, proxy_cpu, 1),
                Kind::HaproxyPlain => start_haproxy_plain_to(&haproxy, dir.path(), nginx.plain_addr, proxy_cpu, 1),
                Kind::HaproxyChecks => start_haproxy_with_checks_to(&haproxy, dir.path(), addr, &nginx.ca, proxy_cpu),
            }
        };
        let start = |c: &Contender| start_at(c, false);
        println!();
        println!("# external rig: wrk -t1 (Debian) → proxy → nginx-full TLS intake (`listen ssl http2`, echo_read_request_body; 202), wrk + nginx on CPU {load_cpu:?}; the floor row relays plaintext to nginx's plaintext port");
        if wrk_loads.iter().any(|(_, l)| matches!(l, WrkLoad::Mix(..) | WrkLoad::MixWan(..))) {
            println!("# Agent mix (wrk, paced): wrk has no open loop (wrk2 is not packaged in Debian 12); its Lua delay() gives each send a slot 1/rate after the previous one, on whole-ms timers; a connection still waiting for its answer sends late; latency from the actual send (no coordinated-omission correction); random bodies of log-uniform sizes from a fixed list; nginx does not verify bodies");
        }
        if !wrk_loads.is_empty() {
            header("");
        }
        for (name, load) in &wrk_loads {
            let wan = matches!(load, WrkLoad::MixWan(..));
            // The floor relays plaintext to nginx directly: no row over the long path.
            let rigged: Vec<&Contender> =
                external.iter().filter(|c| !(wan && matches!(c.kind, Kind::HaproxyPlain))).collect();
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); rigged.len()];
            for _ in 0..reps {
                for (i, c) in rigged.iter().enumerate() {
                    let target = start_at(c, wan);
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    samples[i].push(match load {
                        WrkLoad::Fixed(bytes, conns) => run_wrk(dir.path(), &target, *bytes, *conns, secs, load_cpu),
                        WrkLoad::Mix(sizes, rate, conns) | WrkLoad::MixWan(sizes, rate, conns) => {
                            run_wrk_mix(dir.path(), &target, *sizes, *rate, *conns, secs, load_cpu)
                        }
                    });
                }
            }
            if wan {
                println!("# {name}: wanlink adds {WAN_DELAY} each way between the proxy and nginx");
            }
            let medians: Vec<(String, Sample)> =
                rigged.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median(s))).collect();
            external_rows.push(print_rows(name, &medians, false));
        }
        for conns in idle_external {
            let name = idle_name(conns, " (nginx)");
            let mut samples: Vec<Vec<IdleSample>> = vec![Vec::new(); contenders.len()];
            for _ in 0..reps {
                for (i, c) in contenders.iter().enumerate() {
                    let target = start(c);
                    samples[i].push(measure_idle(&target, conns, idle_warmup, idle_window, dir.path()));
                }
            }
            let medians: Vec<(String, IdleSample)> =
                contenders.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median_idle(s))).collect();
            external_idle_rows.push(print_idle(&name, &medians, idle_secs, warmup));
        }
    }
    let idle_json: serde_json::Map<String, serde_json::Value> =
        contenders.iter().zip(&idle).map(|(c, k)| (c.label.clone(), serde_json::json!(k))).collect();
    let out = serde_json::json!({"machine": machine(), "haproxy": version, "secs": secs, "reps": reps,
        "baseline": baseline.map(|b| b.display().to_string()), "rows": json_rows,
        "external_rows": external_rows, "idle_rss_kib": idle_json, "idle_rows": idle_rows,
        "external_idle_rows": external_idle_rows});
    let path = arg_value("--json").unwrap_or_else(|| "target/compare.json".into());
    if let Some(parent) = std::path::Path::new(&path).parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap())
        .unwrap_or_else(|e| panic!("writing the JSON to {path}: {e} (pass --json FILE)"));
    println!("# JSON written to {path}");
}

#[derive(Clone)]
enum Kind {
    /// A fipsrelay binary and its `workers.io`.
    Relay(PathBuf, &'static str),
    Haproxy,
    HaproxyPlain,
    /// HAProxy with the FIPS Proxy's health checks (idle rows only).
    HaproxyChecks,
}

#[derive(Clone)]
struct Contender {
    label: String,
    kind: Kind,
}

/// Prints one workload's rows and each one's ratio to HAProxy's (the row
/// labelled "haproxy"); p99.9 and RSS ratios only where the rig measures
/// them. Returns its JSON.
fn print_rows(name: &str, rows: &[(String, Sample)], full: bool) -> serde_json::Value {
    println!("{name}");
    for (label, s) in rows {
        println!("{}", s.row(&format!("  {label}")));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let h = rows.iter().find(|(l, _)| l == "haproxy").map(|(_, s)| s.clone()).unwrap_or_default();
    let mut ratios = serde_json::Map::new();
    for (label, r) in rows.iter().filter(|(l, _)| l != "haproxy") {
        let mut line = format!(
            "{:<34} {:>10.2} {:>18} {:>9.2} {:>9.2}",
            format!("  ratio {label}/haproxy"),
            ratio(r.req_per_s, h.req_per_s),
            format!(
                "{:.2} ({:.2}+{:.2})",
                ratio(r.cpu_us_per_req, h.cpu_us_per_req),
                ratio(r.user_us_per_req, h.cpu_us_per_req),
                ratio(r.sys_us_per_req, h.cpu_us_per_req)
            ),
            ratio(r.p50_us, h.p50_us),
            ratio(r.p99_us, h.p99_us)
        );
        if full {
            line.push_str(&format!(
                " {:>10.2} {:>9.2}",
                ratio(r.p99_9_us, h.p99_9_us),
                ratio(r.rss_kib as f64, h.rss_kib as f64)
            ));
        }
        println!("{line}");
        ratios.insert(
            label.clone(),
            serde_json::json!({"req_per_s": ratio(r.req_per_s, h.req_per_s), "cpu_us_per_req": ratio(r.cpu_us_per_req, h.cpu_us_per_req), "p99_us": ratio(r.p99_us, h.p99_us)}),
        );
    }
    // Big or varied bodies: what a request weighed, and --verify's verdict.
    if rows.iter().any(|(_, s)| s.verified.is_some()) || name.contains("mix") || name.contains("MiB") {
        let notes: Vec<String> = rows
            .iter()
            .map(|(l, s)| {
                let verdict = match s.verified {
                    Some(true) => ", verify MATCH",
                    Some(false) => ", verify MISMATCH",
                    None => "",
                };
                format!("{l} {:.1} KiB{verdict}", s.bytes_per_req / 1024.0)
            })
            .collect();
        println!("  mean request: {}", notes.join("; "));
    }
    let samples: serde_json::Map<String, serde_json::Value> =
        rows.iter().map(|(l, s)| (l.clone(), serde_json::to_value(s).unwrap())).collect();
    serde_json::json!({"workload": name, "samples": samples, "ratio_to_haproxy": ratios})
}

fn idle_name(conns: usize, rig: &str) -> String {
    if conns == 0 {
        format!("idle, 0 Agent connections{rig}")
    } else {
        format!("idle, {conns} kept-alive Agent connections{rig}")
    }
}

/// Prints one idle row per contender and each one's ratio to HAProxy's
/// wake-ups and CPU; returns the JSON.
fn print_idle(name: &str, rows: &[(String, IdleSample)], secs: u64, warmup: u64) -> serde_json::Value {
    println!();
    println!("{name} ({warmup}s warm-up, then {secs}s measured; whole process, all threads)");
    println!(
        "{:<34} {:>10} {:>11} {:>11} {:>12} {:>10}",
        "  proxy", "wakeups/s", "CPU ms/s", "run ms/s", "syscalls/s", "conns open"
    );
    for (label, s) in rows {
        let syscalls = if s.syscalls_per_s.is_nan() {
            "-".to_string()
        } else if s.ring_ops_per_s > 0.0 {
            format!("{:.1}+{:.1}", s.syscalls_per_s, s.ring_ops_per_s)
        } else {
            format!("{:.1}", s.syscalls_per_s)
        };
        println!(
            "{:<34} {:>10.1} {:>11.2} {:>11.3} {:>12} {:>10}",
            format!("  {label}"),
            s.wakeups_per_s,
            s.cpu_ms_per_s,
            s.run_ms_per_s,
            syscalls,
            format!("{}/{}", s.open_at_end, s.agent_conns)
        );
    }
    let h = rows.iter().find(|(l, _)| l == "haproxy").map(|(_, s)| s.clone()).unwrap_or_default();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut ratios = serde_json::Map::new();
    // "-" where HAProxy's figure is 0 (its CPU ms/s, in whole clock ticks, often is).
    let shown = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "-".to_string() };
    for (label, r) in rows.iter().filter(|(l, _)| l != "haproxy") {
        println!(
            "{:<34} {:>10} {:>11} {:>11}",
            format!("  ratio {label}/haproxy"),
            shown(ratio(r.wakeups_per_s, h.wakeups_per_s)),
            shown(ratio(r.cpu_ms_per_s, h.cpu_ms_per_s)),
            shown(ratio(r.run_ms_per_s, h.run_ms_per_s))
        );
        ratios.insert(
            label.clone(),
            serde_json::json!({"wakeups_per_s": ratio(r.wakeups_per_s, h.wakeups_per_s), "run_ms_per_s": ratio(r.run_ms_per_s, h.run_ms_per_s)}),
        );
    }
    // Against HAProxy with the FIPS Proxy's health checks, where measured.
    if let Some((_, c)) = rows.iter().find(|(l, _)| l == "haproxy+checks") {
        for (label, r) in rows.iter().filter(|(l, _)| l.starts_with("fipsrelay") || l.starts_with("baseline")) {
            println!(
                "{:<34} {:>10} {:>11} {:>11}",
                format!("  ratio {label}/haproxy+checks"),
                shown(ratio(r.wakeups_per_s, c.wakeups_per_s)),
                shown(ratio(r.cpu_ms_per_s, c.cpu_ms_per_s)),
                shown(ratio(r.run_ms_per_s, c.run_ms_per_s))
            );
        }
    }
    println!("  (CPU ms/s: utime+stime from /proc/PID/stat, whole clock ticks; run ms/s: schedstat, ns; conns open: Agent connections the proxy had not closed at the end)");
    let samples: serde_json::Map<String, serde_json::Value> =
        rows.iter().map(|(l, s)| (l.clone(), serde_json::to_value(s).unwrap())).collect();
    serde_json::json!({"workload": name, "samples": samples, "ratio_to_haproxy": ratios})
}
