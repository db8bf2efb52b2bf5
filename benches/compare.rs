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
//! Run: `benches/compare.sh` (installs HAProxy, wrk and nginx-full when
//! missing), or
//! `cargo bench --bench compare -- [--quick] [--secs N] [--reps N] [--json FILE] [--no-external]
//!  [--io auto|both] [--baseline PATH] [--only SUBSTRING] [--protocol http1|h2]`;
//! `--only` keeps the workloads whose name holds SUBSTRING (e.g. `"1 KiB
//! closed"`), `--protocol` the fipsrelay rows of one upstream protocol.

mod harness;

use harness::*;
use std::path::PathBuf;

const WORKLOADS: &[Workload] = &[
    Workload { name: "1 KiB closed loop, 64 conns", body: "1k", connections: 64, rate: None },
    Workload { name: "64 KiB closed loop, 64 conns", body: "64k", connections: 64, rate: None },
    Workload { name: "1 KiB at 1k req/s", body: "1k", connections: 16, rate: Some(1_000) },
    Workload { name: "1 KiB at 20k req/s", body: "1k", connections: 64, rate: Some(20_000) },
];

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
    let mock = start_mock(&bins, dir.path(), load_cpu);
    let mut json_rows = Vec::new();
    let mut idle: Vec<u64> = vec![0; contenders.len()];
    let header = |extra: &str| {
        println!(
            "{:<34} {:>10} {:>18} {:>9} {:>9} {:>10} {:>9} {:>14} {:>6} {:>5} {:>5}",
            "workload / proxy",
            "req/s",
            "CPU µs/req",
            "p50 µs",
            "p99 µs",
            extra,
            "RSS MiB",
            "syscalls/req",
            "conns",
            "fr/w",
            "req/w"
        )
    };
    println!();
    header("p99.9 µs");
    let only = arg_value("--only");
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
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
                samples[i].push(run_load(&bins, dir.path(), &target, w, secs, warmup, load_cpu));
            }
        }
        let medians: Vec<(String, Sample)> =
            contenders.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median(s))).collect();
        json_rows.push(print_rows(w.name, &medians, true));
    }
    let idle_line: Vec<String> =
        contenders.iter().zip(&idle).map(|(c, k)| format!("{} {:.1} MiB", c.label, *k as f64 / 1024.0)).collect();
    println!("idle RSS: {}", idle_line.join(", "));
    drop(mock);

    // The external rig: wrk → proxy → nginx (TLS, reads the whole body), and
    // the floor: HAProxy plaintext → nginx plaintext.
    let mut external_rows = Vec::new();
    let wrk_ok = std::path::Path::new("/usr/bin/wrk").exists();
    if has_flag("--no-external") {
        println!("# external rig skipped (--no-external)");
    } else if !wrk_ok || nginx_bin().is_none() || echo_module().is_none() {
        println!("# external rig skipped: needs /usr/bin/wrk and nginx-full's echo module (benches/compare.sh installs them)");
    } else {
        let tls = dir.path().join("tls");
        let nginx = start_nginx_intake(dir.path(), &tls, load_cpu);
        let mut external = contenders.clone();
        external.push(Contender { label: "haproxy plain (floor)".into(), kind: Kind::HaproxyPlain });
        println!();
        println!("# external rig: wrk -t1 (Debian) → proxy → nginx-full TLS intake (echo_read_request_body; 202), wrk + nginx on CPU {load_cpu:?}; the floor row relays plaintext to nginx's plaintext port");
        header("");
        for (name, bytes, conns) in
            [("1 KiB closed loop, 64 conns (wrk)", 1024, 64), ("64 KiB closed loop, 64 conns (wrk)", 65536, 64)]
                .into_iter()
                .filter(|(name, ..)| wanted(name))
        {
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); external.len()];
            for _ in 0..reps {
                for (i, c) in external.iter().enumerate() {
                    let target = match &c.kind {
                        Kind::Relay(bin, io) => {
                            start_relay_bin(bin, dir.path(), nginx.addr, &nginx.ca, proxy_cpu, 1, io)
                        }
                        Kind::Haproxy => start_haproxy_to(&haproxy, dir.path(), nginx.addr, &nginx.ca, proxy_cpu, 1),
                        Kind::HaproxyPlain => {
                            start_haproxy_plain_to(&haproxy, dir.path(), nginx.plain_addr, proxy_cpu, 1)
                        }
                    };
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    samples[i].push(run_wrk(dir.path(), &target, bytes, conns, secs, load_cpu));
                }
            }
            let medians: Vec<(String, Sample)> =
                external.iter().zip(&samples).map(|(c, s)| (c.label.clone(), median(s))).collect();
            external_rows.push(print_rows(name, &medians, false));
        }
    }
    let idle_json: serde_json::Map<String, serde_json::Value> =
        contenders.iter().zip(&idle).map(|(c, k)| (c.label.clone(), serde_json::json!(k))).collect();
    let out = serde_json::json!({"machine": machine(), "haproxy": version, "secs": secs, "reps": reps,
        "baseline": baseline.map(|b| b.display().to_string()), "rows": json_rows,
        "external_rows": external_rows, "idle_rss_kib": idle_json});
    let path = arg_value("--json").unwrap_or_else(|| "target/compare.json".into());
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("# JSON written to {path}");
}

#[derive(Clone)]
enum Kind {
    /// A fipsrelay binary and its `workers.io`.
    Relay(PathBuf, &'static str),
    Haproxy,
    HaproxyPlain,
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
    let samples: serde_json::Map<String, serde_json::Value> =
        rows.iter().map(|(l, s)| (l.clone(), serde_json::to_value(s).unwrap())).collect();
    serde_json::json!({"workload": name, "samples": samples, "ratio_to_haproxy": ratios})
}
