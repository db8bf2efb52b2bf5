//! `fipsrelay demo`: the relay's main job on an embedded default, with no
//! network and no Agent. It starts a mock intake (fresh PKI), this relay
//! pointed at it, and a loadgen run over several product ports with
//! `--verify`, then prints loadgen's summary, the relay's CPU time per
//! request and RSS, and whether every body answered 2xx reached the intake
//! byte for byte.
//!
//! The mock intake and loadgen are separate processes (the `mock-intake` and
//! `loadgen` binaries built beside `fipsrelay`), so the relay process holds
//! only its FIPS TLS stack. Everything listens on 127.0.0.1 and stops by itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{name} not found at {path}; build it beside fipsrelay with `cargo build --release --workspace --bins`, or pass --{name} PATH")]
    MissingBinary { name: &'static str, path: PathBuf },
    #[error("cannot create the demo directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot start {name}: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    #[error("{name} did not start: {detail}")]
    Start { name: &'static str, detail: String },
    #[error("no free range of 16 ports on 127.0.0.1")]
    NoPorts,
    #[error("loadgen failed ({status}); its report: {detail}")]
    Load { status: String, detail: String },
    #[error("verification failed: {0}")]
    Mismatch(String),
}

pub struct DemoOptions {
    pub seconds: u64,
    pub connections: usize,
    pub mock_intake: Option<PathBuf>,
    pub loadgen: Option<PathBuf>,
    /// Keep the demo directory (configs, logs, PKI) instead of removing it.
    pub keep: bool,
}

/// A child process stopped (SIGTERM, then kill) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &'static str, given: &Option<PathBuf>) -> Result<PathBuf, DemoError> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| PathBuf::from(name)),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(DemoError::MissingBinary { name, path })
    }
}

/// The default range if free (so the Agent's defaults would work), else any free one.
fn free_port_base() -> Result<u16, DemoError> {
    let free = |base: u16| (0..16).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
    if free(crate::config::DEFAULT_PORT_RANGE_START) {
        return Ok(crate::config::DEFAULT_PORT_RANGE_START);
    }
    for _ in 0..50 {
        let p =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|_| DemoError::NoPorts)?.local_addr().unwrap().port();
        let base = p.clamp(20000, 60000) / 16 * 16;
        if free(base) {
            return Ok(base);
        }
    }
    Err(DemoError::NoPorts)
}

fn wait_for(
    path: &Path,
    needle: &str,
    timeout: Duration,
    child: &mut Child,
    name: &'static str,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DemoError::Start { name, detail: format!("exited with {status}: {}", text.trim()) });
        }
        if Instant::now() > deadline {
            return Err(DemoError::Start { name, detail: format!("not ready after {timeout:?}: {}", text.trim()) });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the demo, printing as it goes. `Ok` only if verification matched.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let mock_bin = sibling("mock-intake", &opts.mock_intake)?;
    let loadgen_bin = sibling("loadgen", &opts.loadgen)?;
    let relay_bin = std::env::current_exe().map_err(|source| DemoError::Spawn { name: "fipsrelay", source })?;
    let dir = std::env::temp_dir().join(format!("fipsrelay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Dir { path: dir.clone(), source })?;
    let result = run_in(opts, &dir, &mock_bin, &loadgen_bin, &relay_bin);
    if opts.keep {
        println!("demo files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(
    opts: &DemoOptions,
    dir: &Path,
    mock_bin: &Path,
    loadgen_bin: &Path,
    relay_bin: &Path,
) -> Result<(), DemoError> {
    // 1. The mock intake, with a fresh CA and a leaf for *.ddog-gov.com.
    let tls = dir.join("tls");
    let (mock, mock_addr) = start_mock(mock_bin, &tls)?;
    println!("mock intake: https://{mock_addr} (TLS; CA {})", tls.join("ca.pem").display());
    // 2. The relay, pointed at the mock, verifying it like the real intake.
    let (relay, base) = start_relay(dir, relay_bin, &mock_addr, &tls)?;
    let pid = relay.0.id() as i32;
    let idle_rss = procstat::rss_kib(pid);
    // 3. Load over several product ports, every 2xx body verified at the mock.
    let ports = [1u16, 2, 5].map(|o| (base + o).to_string()).join(",");
    println!(
        "load: {}s over ports {ports} (metrics, traces, logs), {} connections, Agent-like payloads, --verify",
        opts.seconds, opts.connections
    );
    let json = dir.join("load.json");
    let cpu_before = procstat::cpu_us(pid);
    let out = Command::new(loadgen_bin)
        .args(["--ports", &ports, "--host", "127.0.0.1", "--payload", "series", "--body-size", "512-4k"])
        .args(["--compress", "zstd", "--connections", &opts.connections.to_string()])
        .args(["--duration", &format!("{}s", opts.seconds), "-q", "--verify", &format!("https://{mock_addr}")])
        .arg("--tls-dir")
        .arg(&tls)
        .arg("--json")
        .arg(&json)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| DemoError::Spawn { name: "loadgen", source })?;
    let cpu_after = procstat::cpu_us(pid);
    let busy_rss = procstat::rss_kib(pid);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| DemoError::Load { status: out.status.to_string(), detail: "no JSON report".into() })?;
    let requests = report["requests"].as_u64().unwrap_or(0);
    let cpu_per_req = (cpu_after.saturating_sub(cpu_before)) as f64 / requests.max(1) as f64;
    println!(
        "relay: {:.1} µs CPU per request ({} requests, user+system from /proc), RSS {:.1} MiB idle, {:.1} MiB under load",
        cpu_per_req,
        requests,
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
    drop(relay); // SIGTERM: drain and exit
    drop(mock);
    verdict(&report, requests, &out.status)
}

/// Starts the mock intake with a fresh PKI in `tls`; its address.
fn start_mock(mock_bin: &Path, tls: &Path) -> Result<(Proc, String), DemoError> {
    let mut mock = Command::new(mock_bin)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(tls)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| DemoError::Spawn { name: "mock-intake", source })?;
    let mut line = String::new();
    let _ = BufReader::new(mock.stdout.take().expect("piped stdout")).read_line(&mut line);
    let mock = Proc(mock);
    let mock_addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| DemoError::Start { name: "mock-intake", detail: format!("unexpected output {line:?}") })?
        .to_string();
    Ok((mock, mock_addr))
}

/// Starts this relay on a free port range, sending everything to the mock
/// and trusting its CA, and waits until it is ready; its port range start.
fn start_relay(dir: &Path, relay_bin: &Path, mock_addr: &str, tls: &Path) -> Result<(Proc, u16), DemoError> {
    let base = free_port_base()?;
    let config = dir.join("fipsrelay.toml");
    let toml = format!(
        "[listen]\nport_range_start = {base}\n[upstream]\noverride_addr = \"{mock_addr}\"\nca_file = \"{}\"\n[log]\nlevel = \"warn\"\n[admin]\nenabled = false\n",
        tls.join("ca.pem").display()
    );
    std::fs::write(&config, toml).map_err(|source| DemoError::Dir { path: config.clone(), source })?;
    let log_path = dir.join("relay.log");
    let log = std::fs::File::create(&log_path).map_err(|source| DemoError::Dir { path: log_path.clone(), source })?;
    let relay = Command::new(relay_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| DemoError::Spawn { name: "fipsrelay", source })?;
    let mut relay = Proc(relay);
    wait_for(&log_path, "fipsrelay ready", Duration::from_secs(20), &mut relay.0, "fipsrelay")?;
    let started = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(l) = started.lines().find(|l| l.contains("msg=\"fipsrelay starting\"")) {
        println!("relay: {}", l.split_once("msg=\"fipsrelay starting\"").map_or(l, |(_, r)| r.trim()));
    }
    Ok((relay, base))
}

/// Whether loadgen verified every 2xx body at the intake.
fn verdict(report: &serde_json::Value, requests: u64, status: &std::process::ExitStatus) -> Result<(), DemoError> {
    let v = &report["verify"];
    if v["matched"].as_bool() == Some(true) && requests > 0 {
        println!(
            "verification: MATCH — {} bodies answered 2xx, each received once, byte for byte, by the intake",
            v["bodies"]
        );
        Ok(())
    } else if v.is_null() {
        Err(DemoError::Load { status: status.to_string(), detail: "loadgen did not verify".into() })
    } else {
        Err(DemoError::Mismatch(format!(
            "lost={} duplicated={} corrupted={} complete={}",
            v["lost"], v["duplicated"], v["corrupted"], v["complete"]
        )))
    }
}
