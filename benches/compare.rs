//! fipsrelay side by side with HAProxy configured like the Datadog Agent FIPS
//! proxy, on this machine, in one run. Layout: the proxy under test alone on
//! CPU 1 (taskset), loadgen and the mock intake on CPU 0; one worker /
//! `nbthread 1`. Each workload is measured `--reps` times (default 3),
//! interleaved (fipsrelay, HAProxy, fipsrelay, …); medians are reported with
//! the ratio fipsrelay/HAProxy, and the whole result is written as JSON.
//!
//! A second rig cross-checks the closed-loop rows with tools nobody here
//! wrote: `wrk` (Debian) as the Agent and nginx-full as the TLS intake
//! (`echo_read_request_body`, then 202), wrk and nginx on CPU 0, the proxy
//! alone on CPU 1 as before. Both rigs' ratios are printed.
//!
//! Run: `benches/compare.sh` (installs HAProxy, wrk and nginx-full when
//! missing), or
//! `cargo bench --bench compare -- [--quick] [--secs N] [--reps N] [--json FILE] [--no-external]`.

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

    println!("# fipsrelay vs HAProxy — {}", machine());
    println!("# {version}; fipsrelay {} ({})", env!("CARGO_PKG_VERSION"), fipsrelay::crypto::module_description());
    println!("# proxy on CPU {proxy_cpu:?}, loadgen + mock intake on CPU {load_cpu:?}; {secs}s runs after {warmup}s warm-up, {reps} reps interleaved, medians");
    let mock = start_mock(&bins, dir.path(), load_cpu);
    let mut rows = Vec::new();
    let mut idle = (0u64, 0u64);
    for w in WORKLOADS {
        let mut relay_samples = Vec::new();
        let mut haproxy_samples = Vec::new();
        for _ in 0..reps {
            for kind in ["fipsrelay", "haproxy"] {
                let target = match kind {
                    "fipsrelay" => start_relay(&bins, dir.path(), &mock, proxy_cpu, 1, "auto"),
                    _ => start_haproxy(&haproxy, dir.path(), &mock, proxy_cpu, 1),
                };
                std::thread::sleep(std::time::Duration::from_millis(300));
                let rss_idle = rss_kib(target.proc.pid());
                if kind == "fipsrelay" {
                    idle.0 = idle.0.max(rss_idle)
                } else {
                    idle.1 = idle.1.max(rss_idle)
                }
                let s = run_load(&bins, dir.path(), &target, w, secs, warmup, load_cpu);
                if kind == "fipsrelay" {
                    relay_samples.push(s)
                } else {
                    haproxy_samples.push(s)
                }
            }
        }
        let r = median(&relay_samples);
        let h = median(&haproxy_samples);
        rows.push((w.name, r, h));
    }
    println!();
    println!(
        "{:<34} {:>10} {:>12} {:>9} {:>9} {:>10} {:>9}",
        "workload / proxy", "req/s", "CPU µs/req", "p50 µs", "p99 µs", "p99.9 µs", "RSS MiB"
    );
    let mut json_rows = Vec::new();
    for (name, r, h) in &rows {
        json_rows.push(print_pair(name, r, h, true));
    }
    println!("idle RSS: fipsrelay {:.1} MiB, haproxy {:.1} MiB", idle.0 as f64 / 1024.0, idle.1 as f64 / 1024.0);
    drop(mock);

    // The external rig: wrk → proxy → nginx (TLS, reads the whole body).
    let mut external_rows = Vec::new();
    let wrk_ok = std::path::Path::new("/usr/bin/wrk").exists();
    if has_flag("--no-external") {
        println!("# external rig skipped (--no-external)");
    } else if !wrk_ok || nginx_bin().is_none() || echo_module().is_none() {
        println!("# external rig skipped: needs /usr/bin/wrk and nginx-full's echo module (benches/compare.sh installs them)");
    } else {
        let tls = dir.path().join("tls");
        let nginx = start_nginx_intake(dir.path(), &tls, load_cpu);
        println!();
        println!("# external rig: wrk -t1 (Debian) → proxy → nginx-full TLS intake (echo_read_request_body; 202), wrk + nginx on CPU {load_cpu:?}");
        println!(
            "{:<34} {:>10} {:>12} {:>9} {:>9} {:>10} {:>9}",
            "workload / proxy", "req/s", "CPU µs/req", "p50 µs", "p99 µs", "", "RSS MiB"
        );
        for (name, bytes, conns) in
            [("1 KiB closed loop, 64 conns (wrk)", 1024, 64), ("64 KiB closed loop, 64 conns (wrk)", 65536, 64)]
        {
            let (mut rs, mut hs) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                for kind in ["fipsrelay", "haproxy"] {
                    let target = match kind {
                        "fipsrelay" => start_relay_to(&bins, dir.path(), nginx.addr, &nginx.ca, proxy_cpu, 1, "auto"),
                        _ => start_haproxy_to(&haproxy, dir.path(), nginx.addr, &nginx.ca, proxy_cpu, 1),
                    };
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    let s = run_wrk(dir.path(), &target, bytes, conns, secs, load_cpu);
                    if kind == "fipsrelay" {
                        rs.push(s)
                    } else {
                        hs.push(s)
                    }
                }
            }
            let (r, h) = (median(&rs), median(&hs));
            external_rows.push(print_pair(name, &r, &h, false));
        }
    }
    let out = serde_json::json!({"machine": machine(), "haproxy": version, "secs": secs, "reps": reps, "rows": json_rows,
        "external_rows": external_rows, "idle_rss_kib": {"fipsrelay": idle.0, "haproxy": idle.1}});
    let path = arg_value("--json").unwrap_or_else(|| "target/compare.json".into());
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("# JSON written to {path}");
}

/// Prints one workload's two rows and their ratio row (p99.9 and RSS ratios
/// only where the rig measures them), and returns its JSON.
fn print_pair(name: &str, r: &Sample, h: &Sample, full: bool) -> serde_json::Value {
    println!("{name}");
    for (label, s) in [("  fipsrelay", r), ("  haproxy", h)] {
        println!("{}", s.row(label));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut line = format!(
        "{:<34} {:>10.2} {:>12.2} {:>9.2} {:>9.2}",
        "  ratio fipsrelay/haproxy",
        ratio(r.req_per_s, h.req_per_s),
        ratio(r.cpu_us_per_req, h.cpu_us_per_req),
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
    serde_json::json!({"workload": name, "fipsrelay": r, "haproxy": h,
        "ratio": {"req_per_s": ratio(r.req_per_s, h.req_per_s), "cpu_us_per_req": ratio(r.cpu_us_per_req, h.cpu_us_per_req), "p99_us": ratio(r.p99_us, h.p99_us)}})
}
