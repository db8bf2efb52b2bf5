//! Process-level bench harness shared by the `forward` and `compare` benches:
//! spawns the mock intake, the relay (or HAProxy) and loadgen as separate,
//! pinned processes; reads CPU time, context switches (wake-ups) and RSS
//! from /proc; runs loadgen with `--json` and parses its report (schema 1,
//! see loadgen/src/load/report.rs); measures a proxy at rest with a few
//! kept-alive Agent connections ([`measure_idle`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Bins {
    pub relay: PathBuf,
    pub mock: PathBuf,
    pub loadgen: PathBuf,
    /// loadgen's WAN link emulator.
    pub wanlink: PathBuf,
}

/// The release binaries next to this bench (target/release).
pub fn bins() -> Bins {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let b = Bins {
        relay: PathBuf::from(env!("CARGO_BIN_EXE_fipsrelay")),
        mock: dir.join("mock-intake"),
        loadgen: dir.join("loadgen"),
        wanlink: dir.join("wanlink"),
    };
    for p in [&b.mock, &b.loadgen, &b.wanlink] {
        assert!(p.exists(), "{} not built: run `cargo build --release --workspace --bins` first", p.display());
    }
    b
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs, {}, Linux {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu,
        kernel.trim()
    )
}

fn pinned(bin: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(c) if Path::new("/usr/bin/taskset").exists() => {
            let mut cmd = Command::new("/usr/bin/taskset");
            cmd.arg("-c").arg(c.to_string()).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)]
pub use fipsrelay::procstat::{cpu_split_us, cpu_us, rss_kib};

/// Context switches of the whole process `pid` so far: voluntary +
/// involuntary, summed over /proc/PID/task/*/status (each one is the
/// process being put to sleep or preempted, so a wake-up follows). Threads
/// that exit take their counts with them.
pub fn ctx_switches(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Time on CPU of the whole process `pid` so far, in ns, summed over
/// /proc/PID/task/*/schedstat (ns resolution, where /proc/PID/stat counts
/// clock ticks); `None` without schedstat.
pub fn run_time_ns(pid: i32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
        total = Some(total.unwrap_or(0) + ns);
    }
    total
}

pub struct Mock {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub ca: PathBuf,
}

pub fn start_mock(bins: &Bins, dir: &Path, cpu: Option<usize>) -> Mock {
    let tls = dir.join("tls");
    // HTTP/2 windows as nginx announces them (the h2 crate's 64 KiB
    // connection window would let one 64 KiB body through per round trip).
    let child = pinned(&bins.mock, cpu)
        .args(["--h2-stream-window", "65536", "--h2-connection-window", "2147483647"])
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(&tls)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mock-intake");
    let (proc, addr) = listening(child, "mock-intake");
    Mock { proc, addr, ca: tls.join("ca.pem") }
}

/// A child that prints `listening on ADDR` first (the mock, `wanlink`):
/// its process and that address.
fn listening(mut child: Child, name: &str) -> (Proc, SocketAddr) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name} prints its address first, not {line:?}"))
        .parse()
        .unwrap();
    (Proc { child, name: name.into() }, addr)
}

/// A WAN link (loadgen's `wanlink`) in front of an intake.
pub struct Link {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Starts `wanlink` from a free port to `target`, adding `delay` (e.g.
/// `20ms`) each way: the proxy under test connects to `addr` instead of
/// the intake (the certificate still names the intake's host, and the SNI
/// is the proxy's, so nothing else changes).
pub fn start_wanlink(bins: &Bins, target: SocketAddr, delay: &str, cpu: Option<usize>) -> Link {
    let child = pinned(&bins.wanlink, cpu)
        .args(["--listen", "127.0.0.1:0", "--target", &target.to_string(), "--delay", delay])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wanlink");
    let (proc, addr) = listening(child, "wanlink");
    Link { proc, addr }
}

/// The thing under test: its process and the port of the metrics product.
pub struct Target {
    pub proc: Proc,
    pub metrics_port: u16,
    pub kind: &'static str,
}

fn wait_port(port: u16, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(s) = proc.child.try_wait().unwrap() {
            panic!("{} exited during start: {s}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not listen on {port}", proc.name);
}

/// A base port whose 16 ports are free now. On a machine shared with
/// other benches and tests, loopback ports can run short for a while (a
/// test holding thousands of connections): it keeps trying for up to 30 s.
fn free_base() -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_error = None;
    loop {
        for _ in 0..100 {
            let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let base = p.clamp(20000, 60000) / 16 * 16;
            match (0..16).try_for_each(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).map(drop)) {
                Ok(()) => return base,
                Err(e) => last_error = Some(e),
            }
        }
        if Instant::now() >= deadline {
            panic!("no free range of 16 loopback ports for 30 s (last: {last_error:?})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn start_relay(bins: &Bins, dir: &Path, mock: &Mock, cpu: Option<usize>, threads: usize, io: &str) -> Target {
    start_relay_to(bins, dir, mock.addr, &mock.ca, cpu, threads, io)
}

/// The relay in front of any TLS intake at `addr` whose certificate `ca` signs.
pub fn start_relay_to(
    bins: &Bins,
    dir: &Path,
    addr: SocketAddr,
    ca: &Path,
    cpu: Option<usize>,
    threads: usize,
    io: &str,
) -> Target {
    start_relay_bin(&bins.relay, dir, addr, ca, cpu, threads, io)
}

/// The relay binary `relay` (another build, for an A/B run) in front of the TLS intake at `addr`.
pub fn start_relay_bin(
    relay: &Path,
    dir: &Path,
    addr: SocketAddr,
    ca: &Path,
    cpu: Option<usize>,
    threads: usize,
    io: &str,
) -> Target {
    // "epoll+h2": the backend, then `upstream.protocol` (http1 without it).
    let (io, protocol) = io.split_once('+').unwrap_or((io, "http1"));
    let base = free_base();
    let config = dir.join(format!("fipsrelay-{base}.toml"));
    std::fs::write(
        &config,
        format!(
            "[listen]\nport_range_start = {base}\n[workers]\nthreads = {threads}\npin = false\nio = \"{io}\"\n[upstream]\nprotocol = \"{protocol}\"\noverride_addr = \"{}\"\nca_file = \"{}\"\nmax_idle_per_host = 256\n[log]\nlevel = \"warn\"\n[admin]\nenabled = false\n",
            addr,
            ca.display()
        ),
    )
    .unwrap();
    let child = pinned(relay, cpu)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fipsrelay");
    let mut proc = Proc { child, name: "fipsrelay".into() };
    wait_port(base + 1, &mut proc);
    Target { proc, metrics_port: base + 1, kind: "fipsrelay" }
}

/// HAProxy configured the way the Datadog Agent FIPS proxy is: plaintext
/// HTTP frontend, TLS backend with `verify required` against the CA,
/// `http-reuse always`, `nbthread` = threads.
pub fn start_haproxy(haproxy: &Path, dir: &Path, mock: &Mock, cpu: Option<usize>, threads: usize) -> Target {
    start_haproxy_to(haproxy, dir, mock.addr, &mock.ca, cpu, threads)
}

/// HAProxy as the FIPS proxy in front of any TLS intake at `addr`.
pub fn start_haproxy_to(
    haproxy: &Path,
    dir: &Path,
    addr: SocketAddr,
    ca: &Path,
    cpu: Option<usize>,
    threads: usize,
) -> Target {
    let port = free_base() + 1;
    let config = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(
        &config,
        format!(
            "global\n    nbthread {threads}\n    maxconn 4096\n    tune.ssl.default-dh-param 2048\n    ssl-default-server-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256\n    ssl-default-server-ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256\n    ssl-default-server-options ssl-min-ver TLSv1.2\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n    retries 3\n    option redispatch\n\nfrontend metrics-forwarder\n    bind 127.0.0.1:{port}\n    default_backend datadog-metrics\n\nbackend datadog-metrics\n    http-reuse always\n    http-request set-header Host metrics.agent.ddog-gov.com\n    server mothership {} ssl verify required ca-file {} sni str(metrics.agent.ddog-gov.com)\n",
            addr,
            ca.display()
        ),
    )
    .unwrap();
    spawn_haproxy(haproxy, &config, port, cpu, "haproxy")
}

/// HAProxy with the health checks of the FIPS Proxy's own configuration
/// (tests/data/fips-proxy/shipped.cfg): sixteen backends, one per product,
/// each server line `check port <intake port> ssl verify required ...` with
/// the default `inter` (2 s), all in front of the intake at `addr`. For the
/// idle rows: what the FIPS Proxy does at rest, beside the check-less
/// HAProxy of the other rows.
pub fn start_haproxy_with_checks_to(
    haproxy: &Path,
    dir: &Path,
    addr: SocketAddr,
    ca: &Path,
    cpu: Option<usize>,
) -> Target {
    use std::fmt::Write as _;
    let port = free_base() + 1;
    let config = dir.join(format!("haproxy-checks-{port}.cfg"));
    let mut text = String::from(
        "global\n    nbthread 1\n    maxconn 4096\n    ssl-default-server-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256\n    ssl-default-server-options ssl-min-ver TLSv1.2\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n    timeout check 5s\n    retries 3\n    option redispatch\n\n",
    );
    for i in 0..16u16 {
        let bind = if i == 0 { format!("    bind 127.0.0.1:{port}\n") } else { String::new() };
        let _ = write!(
            text,
            "frontend product-{i}\n{bind}    default_backend datadog-{i}\n\nbackend datadog-{i}\n    http-reuse always\n    http-request set-header Host metrics.agent.ddog-gov.com\n    server mothership {addr} check port {} ssl verify required ca-file {} sni str(metrics.agent.ddog-gov.com)\n\n",
            addr.port(),
            ca.display()
        );
    }
    std::fs::write(&config, text).unwrap();
    spawn_haproxy(haproxy, &config, port, cpu, "haproxy")
}

/// Runs HAProxy on `config` and waits for its frontend at `port`.
fn spawn_haproxy(haproxy: &Path, config: &Path, port: u16, cpu: Option<usize>, kind: &'static str) -> Target {
    let child = pinned(haproxy, cpu)
        .arg("-f")
        .arg(config)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let mut proc = Proc { child, name: "haproxy".into() };
    wait_port(port, &mut proc);
    Target { proc, metrics_port: port, kind }
}

/// HAProxy relaying plaintext to a plaintext intake at `addr`: no TLS at
/// all, the floor of an HTTP relay on this machine.
pub fn start_haproxy_plain_to(
    haproxy: &Path,
    dir: &Path,
    addr: SocketAddr,
    cpu: Option<usize>,
    threads: usize,
) -> Target {
    let port = free_base() + 1;
    let config = dir.join(format!("haproxy-plain-{port}.cfg"));
    std::fs::write(
        &config,
        format!(
            "global\n    nbthread {threads}\n    maxconn 4096\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n\nfrontend metrics-forwarder\n    bind 127.0.0.1:{port}\n    default_backend plain\n\nbackend plain\n    http-reuse always\n    http-request set-header Host metrics.agent.ddog-gov.com\n    server intake {addr}\n"
        ),
    )
    .unwrap();
    spawn_haproxy(haproxy, &config, port, cpu, "haproxy-plain")
}

/// `perf stat` counting the proxy's system calls and io_uring submissions
/// over a window; (NaN, NaN) without perf or tracepoint access.
pub struct SyscallCounter {
    child: Option<Child>,
    out: PathBuf,
}

impl SyscallCounter {
    pub fn start(pid: i32, dir: &Path) -> SyscallCounter {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let out = dir.join(format!("perf-stat-{}.csv", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let child = Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "raw_syscalls:sys_enter",
                "-e",
                "io_uring:io_uring_submit_req",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        // perf attaches within a few ms; the window is seconds long.
        std::thread::sleep(Duration::from_millis(50));
        SyscallCounter { child, out }
    }

    pub fn stop(self) -> (f64, f64) {
        let Some(mut child) = self.child else { return (f64::NAN, f64::NAN) };
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let count = |event: &str| {
            text.lines()
                .find(|l| l.contains(event))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        match count("raw_syscalls:sys_enter") {
            Some(sys) => (sys, count("io_uring:io_uring_submit_req").unwrap_or(0.0)),
            None => (f64::NAN, f64::NAN),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    /// loadgen's `--body-size`: `1k`, or a distribution such as
    /// `log-uniform:512..1m` (raw random bodies either way).
    pub body: &'static str,
    pub connections: usize,
    pub rate: Option<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub req_per_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub cpu_us_per_req: f64,
    /// The user and system parts of `cpu_us_per_req`.
    pub user_us_per_req: f64,
    pub sys_us_per_req: f64,
    /// System calls (`raw_syscalls:sys_enter`) and io_uring submissions
    /// (`io_uring:io_uring_submit_req`) per request, from `perf stat` on the
    /// proxy over the window; NaN without perf.
    pub syscalls_per_req: f64,
    pub ring_ops_per_req: f64,
    /// The proxy's context switches (voluntary + involuntary, all threads)
    /// per request over the window: its wake-ups.
    pub wakeups_per_req: f64,
    /// Bytes per request: loadgen's heads + bodies as it counted them; on
    /// the wrk rig the bodies' mean (wrk counts only what it reads).
    pub bytes_per_req: f64,
    /// loadgen `--verify`: every body answered 2xx reached the intake once.
    pub verified: Option<bool>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub rss_kib: u64,
    /// fipsrelay over HTTP/2: frames and requests (streams) per TLS write
    /// over the window; NaN otherwise.
    pub frames_per_write: f64,
    pub requests_per_write: f64,
    /// fipsrelay: intake connections open at the end of the window (HTTP/2
    /// connections and HTTP/1.1 sessions); NaN for other proxies.
    pub upstream_conns: f64,
}

/// fipsrelay's upstream counters, from its status port's `/metrics`: HTTP/2
/// writes, frames and streams, and the intake connections open now.
#[derive(Clone, Copy, Default)]
struct Upstream {
    writes: f64,
    frames: f64,
    streams: f64,
    conns: f64,
}

fn upstream_counters(target: &Target) -> Option<Upstream> {
    use std::io::{Read, Write};
    if target.kind != "fipsrelay" {
        return None;
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", target.metrics_port - 1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some(Upstream {
        writes: sum("fipsrelay_upstream_h2_writes_total"),
        frames: sum("fipsrelay_upstream_h2_frames_written_total"),
        streams: sum("fipsrelay_upstream_h2_streams_total"),
        conns: sum("fipsrelay_upstream_h2_connections") + sum("fipsrelay_upstream_sessions_open"),
    })
}

/// Frames per write, requests per write, connections at the end.
fn per_write(before: Option<Upstream>, after: Option<Upstream>) -> (f64, f64, f64) {
    match (before, after) {
        (Some(b), Some(a)) if a.writes > b.writes => {
            let w = a.writes - b.writes;
            ((a.frames - b.frames) / w, (a.streams - b.streams) / w, a.conns)
        }
        (_, Some(a)) => (f64::NAN, f64::NAN, a.conns),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// Runs loadgen against `target` and measures the target's CPU over the run.
pub fn run_load(
    bins: &Bins,
    dir: &Path,
    target: &Target,
    w: &Workload,
    secs: u64,
    warmup: u64,
    cpu: Option<usize>,
) -> Sample {
    run_load_verified(bins, dir, target, w, secs, warmup, cpu, None)
}

/// [`run_load`], with loadgen's `--verify` against `mock` when given (the
/// mock is reset at the start; its digest is compared at the end, outside
/// the measured window).
#[allow(clippy::too_many_arguments)]
pub fn run_load_verified(
    bins: &Bins,
    dir: &Path,
    target: &Target,
    w: &Workload,
    secs: u64,
    warmup: u64,
    cpu: Option<usize>,
    mock: Option<&Mock>,
) -> Sample {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = dir.join(format!("load-{}-{n}.json", target.kind));
    let mut cmd = pinned(&bins.loadgen, cpu);
    cmd.arg("--target")
        .arg(format!("http://127.0.0.1:{}/api/v2/series", target.metrics_port))
        .args(["--connections", &w.connections.to_string(), "--payload", "raw", "--body-size", w.body])
        .args(["--duration", &format!("{secs}s"), "--warmup", &format!("{warmup}s"), "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = w.rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    if let Some(mock) = mock {
        cmd.arg("--verify").arg(format!("https://{}", mock.addr)).arg("--verify-ca").arg(&mock.ca);
    }
    let mut child = cmd.spawn().expect("spawn loadgen");
    // CPU is sampled over the measured window only (after the warm-up).
    std::thread::sleep(Duration::from_secs(warmup));
    let counter = SyscallCounter::start(target.proc.pid(), dir);
    let cpu0 = cpu_split_us(target.proc.pid());
    let ctx0 = ctx_switches(target.proc.pid());
    let up0 = upstream_counters(target);
    // The window ends with loadgen's last answer; with --verify loadgen then
    // asks the mock for its digest, which the proxy takes no part in.
    let status = child.wait().unwrap();
    let cpu1 = cpu_split_us(target.proc.pid());
    let ctx1 = ctx_switches(target.proc.pid());
    let (syscalls, ring_ops) = counter.stop();
    let (frames_per_write, requests_per_write, upstream_conns) = per_write(up0, upstream_counters(target));
    assert!(status.success() || json.exists(), "loadgen failed: {status}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let requests = report["requests"].as_u64().unwrap_or(0).max(1);
    let lat = &report["latency_us"];
    let verified = report["verify"]["matched"].as_bool();
    if verified == Some(false) {
        eprintln!("{}: loadgen --verify found a MISMATCH: {}", target.kind, report["verify"]);
    }
    Sample {
        req_per_s: report["req_per_s"].as_f64().unwrap_or(0.0),
        ok: report["ok"].as_u64().unwrap_or(0),
        errors: report["errors"]["total"].as_u64().unwrap_or(0),
        cpu_us_per_req: (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64 / requests as f64,
        user_us_per_req: cpu1.0.saturating_sub(cpu0.0) as f64 / requests as f64,
        sys_us_per_req: cpu1.1.saturating_sub(cpu0.1) as f64 / requests as f64,
        syscalls_per_req: syscalls / requests as f64,
        ring_ops_per_req: ring_ops / requests as f64,
        wakeups_per_req: ctx1.saturating_sub(ctx0) as f64 / requests as f64,
        bytes_per_req: report["sent_bytes"].as_f64().unwrap_or(0.0) / requests as f64,
        verified,
        p50_us: lat["p50"].as_f64().unwrap_or(0.0),
        p99_us: lat["p99"].as_f64().unwrap_or(0.0),
        p99_9_us: lat["p99_9"].as_f64().unwrap_or(0.0),
        rss_kib: rss_kib(target.proc.pid()),
        frames_per_write,
        requests_per_write,
        upstream_conns,
    }
}

impl Sample {
    /// One table row: label, req/s, CPU µs/req (user + sys), p50/p99/p99.9 µs,
    /// RSS MiB, system calls (+ io_uring submissions) per request, wake-ups
    /// (context switches) per request.
    pub fn row(&self, label: &str) -> String {
        format!(
            "{label:<34} {:>10.0} {:>18} {:>9.0} {:>9.0} {:>10.0} {:>9.1} {:>14} {:>8.2}",
            self.req_per_s,
            format!("{:.1} ({:.1}+{:.1})", self.cpu_us_per_req, self.user_us_per_req, self.sys_us_per_req),
            self.p50_us,
            self.p99_us,
            self.p99_9_us,
            self.rss_kib as f64 / 1024.0,
            if self.syscalls_per_req.is_nan() {
                "-".to_string()
            } else if self.ring_ops_per_req > 0.0 {
                format!("{:.1}+{:.1}", self.syscalls_per_req, self.ring_ops_per_req)
            } else {
                format!("{:.1}", self.syscalls_per_req)
            },
            self.wakeups_per_req
        ) + &self.upstream_columns()
    }

    /// Intake connections, and over HTTP/2 frames and requests per TLS write.
    fn upstream_columns(&self) -> String {
        let mut s = String::new();
        if !self.upstream_conns.is_nan() {
            s.push_str(&format!(" {:>6.0}", self.upstream_conns));
        }
        if !self.frames_per_write.is_nan() {
            s.push_str(&format!(" {:>5.2} {:>5.2}", self.frames_per_write, self.requests_per_write));
        }
        s
    }
}

/// Median of each field over samples.
pub fn median(samples: &[Sample]) -> Sample {
    fn med(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    }
    Sample {
        req_per_s: med(samples.iter().map(|s| s.req_per_s).collect()),
        ok: med(samples.iter().map(|s| s.ok as f64).collect()) as u64,
        errors: med(samples.iter().map(|s| s.errors as f64).collect()) as u64,
        cpu_us_per_req: med(samples.iter().map(|s| s.cpu_us_per_req).collect()),
        user_us_per_req: med(samples.iter().map(|s| s.user_us_per_req).collect()),
        sys_us_per_req: med(samples.iter().map(|s| s.sys_us_per_req).collect()),
        syscalls_per_req: med(samples.iter().map(|s| s.syscalls_per_req).collect()),
        ring_ops_per_req: med(samples.iter().map(|s| s.ring_ops_per_req).collect()),
        wakeups_per_req: med(samples.iter().map(|s| s.wakeups_per_req).collect()),
        bytes_per_req: med(samples.iter().map(|s| s.bytes_per_req).collect()),
        // A mismatch in any repetition stays visible.
        verified: samples.iter().filter_map(|s| s.verified).reduce(|a, b| a && b),
        p50_us: med(samples.iter().map(|s| s.p50_us).collect()),
        p99_us: med(samples.iter().map(|s| s.p99_us).collect()),
        p99_9_us: med(samples.iter().map(|s| s.p99_9_us).collect()),
        rss_kib: med(samples.iter().map(|s| s.rss_kib as f64).collect()) as u64,
        frames_per_write: med(samples.iter().map(|s| s.frames_per_write).collect()),
        requests_per_write: med(samples.iter().map(|s| s.requests_per_write).collect()),
        upstream_conns: med(samples.iter().map(|s| s.upstream_conns).collect()),
    }
}

pub fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub fn has_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A Debian nginx as the TLS intake (the external rig): one worker, TLS 1.2
/// and 1.3 with the mock PKI's leaf certificate, reading the whole body
/// (`echo_read_request_body`, nginx-full's echo module) before answering 202.
pub struct NginxIntake {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The same server without TLS (for the plaintext floor).
    pub plain_addr: SocketAddr,
    pub ca: PathBuf,
}

pub fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists())
}

pub fn echo_module() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/share/nginx/modules/ngx_http_echo_module.so");
    p.exists().then_some(p)
}

/// Starts nginx with `tls` (a mock-intake PKI directory: ca.pem, cert.pem, key.pem).
pub fn start_nginx_intake(dir: &Path, tls: &Path, cpu: Option<usize>) -> NginxIntake {
    let nginx = nginx_bin().expect("nginx not installed: apt-get install nginx-full");
    let echo = echo_module().expect("nginx's echo module missing: apt-get install nginx-full");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(&root).unwrap();
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {echo};\nworker_processes 1;\ndaemon off;\npid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
               fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n\
               client_body_buffer_size 128k;\n  client_max_body_size 64m;\n\
               server {{\n    listen 127.0.0.1:{port} ssl http2;\n    listen 127.0.0.1:{plain};\n    ssl_certificate {t}/cert.pem;\n    ssl_certificate_key {t}/key.pem;\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    keepalive_requests 10000000;\n    keepalive_timeout 120s;\n\
                 location / {{ echo_read_request_body; echo_status 202; echo -n \"{{}}\"; }}\n  }}\n}}\n",
            echo = echo.display(),
            r = root.display(),
            t = tls.display()
        ),
    )
    .unwrap();
    let child = pinned(&nginx, cpu)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let mut proc = Proc { child, name: "nginx".into() };
    wait_port(port, &mut proc);
    NginxIntake {
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        plain_addr: SocketAddr::from(([127, 0, 0, 1], plain)),
        ca: tls.join("ca.pem"),
    }
}

/// Runs wrk (Debian's; closed loop, one thread) against `target` with POSTs
/// of `body_bytes`, and measures the target's CPU over the run. A 1 s wrk run
/// first warms the pools.
pub fn run_wrk(
    dir: &Path,
    target: &Target,
    body_bytes: usize,
    connections: usize,
    secs: u64,
    cpu: Option<usize>,
) -> Sample {
    let script = dir.join(format!("post-{body_bytes}.lua"));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {body_bytes})\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"DD-API-KEY\"] = \"0123456789abcdef0123456789abcdef\"\n"
        ),
    )
    .unwrap();
    Sample { bytes_per_req: body_bytes as f64, ..wrk_sample(target, &script, connections, secs, cpu, dir) }
}

/// Requests in the size list of [`run_wrk_mix`]'s script (it cycles).
const WRK_MIX_REQUESTS: usize = 4096;

/// Runs wrk against `target` paced at about `rate` req/s in all over
/// `connections`, each POST a slice of a block of random bytes of a size
/// drawn from `sizes` (loadgen's distributions, fixed seed): the Agent mix
/// for a client nobody here wrote. wrk cannot pace by itself; the script's
/// `delay()` hands each send a slot `k / rate` after the first (read from
/// CLOCK_MONOTONIC through LuaJIT's FFI) and wrk's timers fire on whole
/// milliseconds. It is a paced closed loop: a connection sends only once
/// its previous answer is in, and wrk's latency counts from the actual
/// send, not the slot (no coordinated-omission correction). A 1 s run
/// first warms the pools.
pub fn run_wrk_mix(
    dir: &Path,
    target: &Target,
    sizes: loadgen::load::BodySize,
    rate: u64,
    connections: usize,
    secs: u64,
    cpu: Option<usize>,
) -> Sample {
    use loadgen::load::payload::Rng;
    let tag = sizes.to_string().replace([':', '.'], "_");
    let blob = dir.join(format!("mix-{tag}.bin"));
    let slide = 64 * 1024;
    let mut rng = Rng::new(0x5EED);
    if !blob.exists() {
        let mut bytes = Vec::with_capacity(sizes.max + slide + 8);
        while bytes.len() < sizes.max + slide {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        std::fs::write(&blob, &bytes).unwrap();
    }
    let mut rng = Rng::new(0xA6E7);
    let mut lens = Vec::with_capacity(WRK_MIX_REQUESTS);
    let mut starts = Vec::with_capacity(WRK_MIX_REQUESTS);
    let mut total = 0usize;
    for _ in 0..WRK_MIX_REQUESTS {
        let len = sizes.draw(&mut rng);
        total += len;
        lens.push(len.to_string());
        starts.push(rng.below(slide as u64).to_string());
    }
    let script = dir.join(format!("mix-{tag}-{rate}.lua"));
    std::fs::write(
        &script,
        format!(
            r#"-- Agent mix for wrk: random bodies of drawn sizes, paced to {rate} req/s.
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} fipsrelay_bench_timespec;
int clock_gettime(int clk_id, fipsrelay_bench_timespec *tp);
]]
local ts = ffi.new("fipsrelay_bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local f = assert(io.open("{blob}", "rb"))
local blob = f:read("*a")
f:close()
local lens = {{ {lens} }}
local starts = {{ {starts} }}
local interval = 1000 / {rate}
local t0 = nil
local k = 0
local j = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["DD-API-KEY"] = "0123456789abcdef0123456789abcdef"
function delay()
  local now = now_ms()
  if t0 == nil then t0 = now end
  local at = t0 + k * interval
  k = k + 1
  if at <= now then return 0 end
  return math.floor(at - now + 0.5)
end
function request()
  j = j % #lens + 1
  local start = starts[j]
  return wrk.format(nil, nil, nil, blob:sub(start + 1, start + lens[j]))
end
"#,
            blob = blob.display(),
            lens = lens.join(","),
            starts = starts.join(","),
        ),
    )
    .unwrap();
    // Bodies only (wrk's heads are ~150 B): the mean of the cycled list.
    let mean = total as f64 / WRK_MIX_REQUESTS as f64;
    Sample { bytes_per_req: mean, ..wrk_sample(target, &script, connections, secs, cpu, dir) }
}

/// wrk (one thread, `connections`) with `script` against `target`'s metrics
/// port: a 1 s warm-up run, then `secs` measured, with the target's CPU,
/// system calls and context switches over that window.
fn wrk_sample(target: &Target, script: &Path, connections: usize, secs: u64, cpu: Option<usize>, dir: &Path) -> Sample {
    let url = format!("http://127.0.0.1:{}/api/v2/series", target.metrics_port);
    let wrk = |d: u64| {
        let mut c = pinned(Path::new("/usr/bin/wrk"), cpu);
        c.args(["-t1", "-c", &connections.to_string(), "-d", &format!("{d}s"), "--latency", "-s"])
            .arg(script)
            .arg(&url)
            .stderr(Stdio::null());
        c
    };
    let _ = wrk(1).stdout(Stdio::null()).status();
    let counter = SyscallCounter::start(target.proc.pid(), dir);
    let cpu0 = cpu_split_us(target.proc.pid());
    let ctx0 = ctx_switches(target.proc.pid());
    let up0 = upstream_counters(target);
    let out = wrk(secs).output().expect("wrk not installed: apt-get install wrk");
    let cpu1 = cpu_split_us(target.proc.pid());
    let ctx1 = ctx_switches(target.proc.pid());
    let (syscalls, ring_ops) = counter.stop();
    let (frames_per_write, requests_per_write, upstream_conns) = per_write(up0, upstream_counters(target));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<String> {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].trim().to_string())
    };
    let dur_us = |v: &str| -> f64 {
        let v = v.trim();
        let (num, mult) = if let Some(n) = v.strip_suffix("us") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1e3)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1e6)
        } else {
            (v, 1.0)
        };
        num.trim().parse::<f64>().unwrap_or(0.0) * mult
    };
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let per = |v: f64| v / requests.max(1) as f64;
    Sample {
        req_per_s: field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        ok: requests.saturating_sub(non2xx),
        errors: non2xx,
        cpu_us_per_req: per((cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64),
        user_us_per_req: per(cpu1.0.saturating_sub(cpu0.0) as f64),
        sys_us_per_req: per(cpu1.1.saturating_sub(cpu0.1) as f64),
        syscalls_per_req: per(syscalls),
        ring_ops_per_req: per(ring_ops),
        wakeups_per_req: per(ctx1.saturating_sub(ctx0) as f64),
        // wrk counts bytes read, not sent: the callers know the bodies.
        bytes_per_req: f64::NAN,
        verified: None,
        p50_us: field("50%").map(|v| dur_us(&v)).unwrap_or(0.0),
        p99_us: field("99%").map(|v| dur_us(&v)).unwrap_or(0.0),
        p99_9_us: 0.0,
        rss_kib: rss_kib(target.proc.pid()),
        frames_per_write,
        requests_per_write,
        upstream_conns,
    }
}

/// A proxy at rest, measured over a window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IdleSample {
    /// Agent connections opened (each sent one request, then stayed idle).
    pub agent_conns: usize,
    /// Of those, still open at the end of the window (the proxy may close
    /// idle ones: HAProxy after `timeout client`).
    pub open_at_end: usize,
    /// Context switches (voluntary + involuntary, all threads) per second.
    pub wakeups_per_s: f64,
    /// utime + stime (/proc/PID/stat, clock ticks) per second, in ms.
    pub cpu_ms_per_s: f64,
    /// Time on CPU from schedstat (ns resolution) per second, in ms; NaN
    /// without schedstat.
    pub run_ms_per_s: f64,
    /// System calls per second (perf); NaN without perf.
    pub syscalls_per_s: f64,
    pub ring_ops_per_s: f64,
}

/// Opens `agent_conns` kept-alive connections to `target`'s metrics port,
/// each sending one small POST and reading its answer (so the proxy also
/// holds its intake sessions, as after an Agent's flush), waits `warmup`,
/// then measures the whole process over `window`: wake-ups (context
/// switches), CPU time, system calls. The connections close on return.
pub fn measure_idle(target: &Target, agent_conns: usize, warmup: Duration, window: Duration, dir: &Path) -> IdleSample {
    let conns: Vec<std::net::TcpStream> = (0..agent_conns).filter_map(|_| agent_request(target.metrics_port)).collect();
    std::thread::sleep(warmup);
    let pid = target.proc.pid();
    let counter = SyscallCounter::start(pid, dir);
    let (cpu0, ctx0, run0, t0) = (cpu_split_us(pid), ctx_switches(pid), run_time_ns(pid), Instant::now());
    std::thread::sleep(window);
    let (cpu1, ctx1, run1, t1) = (cpu_split_us(pid), ctx_switches(pid), run_time_ns(pid), Instant::now());
    let (syscalls, ring_ops) = counter.stop();
    let secs = (t1 - t0).as_secs_f64();
    let open_at_end = conns.iter().filter(|c| still_open(c)).count();
    IdleSample {
        agent_conns: conns.len(),
        open_at_end,
        wakeups_per_s: ctx1.saturating_sub(ctx0) as f64 / secs,
        cpu_ms_per_s: (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64 / 1000.0 / secs,
        run_ms_per_s: match (run0, run1) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6 / secs,
            _ => f64::NAN,
        },
        syscalls_per_s: syscalls / secs,
        ring_ops_per_s: ring_ops / secs,
    }
}

/// One Agent-like POST (`{}` body) on a new connection, its answer read in
/// full; the connection, kept alive, or `None` when that failed.
fn agent_request(port: u16) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        b"POST /api/v2/series HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: datadog-agent/7.60.0\r\n\
          DD-API-KEY: 0123456789abcdef0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let body = &got[end + 4..];
        let length =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
        let done = match length {
            Some(len) => body.len() >= len,
            None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if done {
            return head.starts_with("http/1.1 2").then_some(s);
        }
    }
}

/// True while the peer has not closed `s` (a non-blocking peek).
fn still_open(s: &std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let open = matches!(s.peek(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    open
}

/// Median of each field over idle samples.
pub fn median_idle(samples: &[IdleSample]) -> IdleSample {
    fn med(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    let f = |get: fn(&IdleSample) -> f64| med(samples.iter().map(get).collect());
    IdleSample {
        agent_conns: samples.first().map(|s| s.agent_conns).unwrap_or(0),
        open_at_end: f(|s| s.open_at_end as f64) as usize,
        wakeups_per_s: f(|s| s.wakeups_per_s),
        cpu_ms_per_s: f(|s| s.cpu_ms_per_s),
        run_ms_per_s: f(|s| s.run_ms_per_s),
        syscalls_per_s: f(|s| s.syscalls_per_s),
        ring_ops_per_s: f(|s| s.ring_ops_per_s),
    }
}
