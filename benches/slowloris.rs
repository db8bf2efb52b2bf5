//! Slowloris: normal clients' throughput through one relay worker, alone and
//! while 1,000 connections trickle a request head one byte at a time. The
//! relay keeps the trickling connections within `limits.header_timeout` and
//! answers them 408; the bench prints both rates and their ratio (the goal is
//! > 90%). Same pinned layout as `compare`: relay on CPU 1, the rest on CPU 0.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench slowloris -- [--quick]`.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;

/// Opens `n` connections to `port` and trickles one header byte to each,
/// round robin, about every `period`, until `stop`. Reconnects a connection
/// the relay closed (it answers 408 after the header timeout).
fn slowloris(port: u16, n: usize, period: Duration, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    let open = || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_nodelay(true).ok()?;
        s.write_all(b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\n").ok()?;
        Some(s)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
    let step = period / n as u32;
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let alive = c.as_mut().is_some_and(|s| s.write_all(b"X").is_ok());
            if !alive {
                closed.fetch_add(1, Ordering::Relaxed);
                *c = open();
            }
            std::thread::sleep(step);
        }
    }
}

fn main() {
    let quick = has_flag("--quick");
    let secs = if quick { 3 } else { 10 };
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (relay_cpu, load_cpu) = if cpus >= 2 { (Some(1), Some(0)) } else { (None, None) };
    println!("# slowloris bench — {}", machine());
    let mock = start_mock(&bins, dir.path(), load_cpu);
    let target = start_relay(&bins, dir.path(), &mock, relay_cpu, 1, "auto");
    let w = Workload { name: "1 KiB closed, 16 conns", body: "1k", connections: 16, rate: None };
    let alone = run_load(&bins, dir.path(), &target, &w, secs, 1, load_cpu);

    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, closed) = (stop.clone(), closed.clone());
        let port = target.metrics_port;
        std::thread::spawn(move || {
            // The attacker shares CPU 0 with loadgen and the mock, never the relay's CPU.
            if let Some(cpu) = load_cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            slowloris(port, 1_000, Duration::from_secs(1), stop, closed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let rss_under_attack = rss_kib(target.proc.pid());
    let attacked = run_load(&bins, dir.path(), &target, &w, secs, 1, load_cpu);
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();

    println!("{:<40} {:>10} {:>12} {:>9} {:>9}", "normal clients", "req/s", "CPU µs/req", "p50 µs", "p99 µs");
    for (label, s) in [("alone", &alone), ("with 1,000 slowloris connections", &attacked)] {
        println!("{label:<40} {:>10.0} {:>12.1} {:>9.0} {:>9.0}", s.req_per_s, s.cpu_us_per_req, s.p50_us, s.p99_us);
    }
    println!(
        "throughput kept: {:.1}% (goal > 90%); slowloris connections closed by the relay (408 or reset): {}; relay RSS under attack {:.1} MiB",
        100.0 * attacked.req_per_s / alone.req_per_s.max(1.0),
        closed.load(Ordering::Relaxed),
        rss_under_attack as f64 / 1024.0
    );
}
