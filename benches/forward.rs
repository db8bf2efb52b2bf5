//! End to end through the relay (spawned processes, pinned like the HAProxy
//! comparison: relay on CPU 1, loadgen and mock intake on CPU 0): req/s,
//! relay CPU µs per request (from /proc/PID/stat), RSS and HDR percentiles
//! for 1 KiB and 64 KiB bodies, closed loop, 64 connections, on each
//! usable I/O backend.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench forward -- [--quick]`.

mod harness;

use harness::*;

fn main() {
    let quick = has_flag("--quick");
    let secs = if quick { 3 } else { 10 };
    let warmup = if quick { 1 } else { 2 };
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (relay_cpu, load_cpu) = if cpus >= 2 { (Some(1), Some(0)) } else { (None, None) };
    println!("# forward bench — {}", machine());
    println!("# {}; {secs}s runs after {warmup}s warm-up", fipsrelay::crypto::module_description());
    let mock = start_mock(&bins, dir.path(), load_cpu);
    println!(
        "{:<34} {:>10} {:>12} {:>9} {:>9} {:>10} {:>9}",
        "workload", "req/s", "CPU µs/req", "p50 µs", "p99 µs", "p99.9 µs", "RSS MiB"
    );
    for io in ["uring", "epoll"] {
        if io == "uring" && fipsrelay::io::probe_uring().is_err() {
            println!("io_uring unavailable: skipping");
            continue;
        }
        for (body, label) in [("1k", "1 KiB"), ("64k", "64 KiB")] {
            let target = start_relay(&bins, dir.path(), &mock, relay_cpu, 1, io);
            let w = Workload { name: "", body, connections: 64, rate: None };
            let s = run_load(&bins, dir.path(), &target, &w, secs, warmup, load_cpu);
            println!("{}", s.row(&format!("{io} {label} closed, 64 conns")));
            assert!(s.errors == 0, "{} errors", s.errors);
        }
    }
}
