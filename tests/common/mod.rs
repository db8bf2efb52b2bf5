//! End-to-end harness: a real `fipsrelay` process with a generated config and
//! PKI, a real TLS mock intake (in-process, its own thread and runtime), and
//! plain-TCP clients. Ports come from the kernel or are retried; every wait
//! polls with a deadline.
#![allow(dead_code, unused_imports)]

pub mod squid;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use loadgen::client::{encode_chunked, read_response, send, Response};
pub use loadgen::hash::body_hash;
pub use loadgen::mock::{Behavior, CipherMode, Fault, MockConfig, MockIntake};
pub use loadgen::pki::TestPki;

/// A fake API key, in the shape of a real one, for the scrubbing checks.
pub const FAKE_KEY: &str = "5f2c8a1e9b7d4c3a6e0f1b2d3c4a5e6f";

/// Runs the test body once per I/O backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn uring() {
                if $crate::common::skip_uring() {
                    return;
                }
                ($body)("uring")
            }
            #[test]
            fn epoll() {
                ($body)("epoll")
            }
        }
    };
}

/// io_uring tests run unless FIPSRELAY_TEST_SKIP_URING=1 says the host blocks it.
pub fn skip_uring() -> bool {
    if std::env::var("FIPSRELAY_TEST_SKIP_URING").as_deref() == Ok("1") {
        eprintln!("skipping io_uring variant: FIPSRELAY_TEST_SKIP_URING=1");
        return true;
    }
    false
}

pub struct TestDir(pub tempfile::TempDir);

impl TestDir {
    pub fn new() -> Self {
        TestDir(tempfile::Builder::new().prefix("fipsrelay-test-").tempdir().unwrap())
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A mock intake with a fresh PKI whose CA is written to `dir/ca.pem`.
pub struct Intake {
    pub mock: MockIntake,
    pub pki: TestPki,
    pub ca_file: PathBuf,
}

impl Intake {
    pub fn start(dir: &Path) -> Intake {
        Self::start_with(dir, Behavior::default(), CipherMode::Default)
    }

    pub fn start_with(dir: &Path, behavior: Behavior, cipher: CipherMode) -> Intake {
        Self::start_config(dir, |cfg| {
            cfg.behavior = behavior;
            cfg.cipher = cipher;
        })
    }

    /// A mock intake answering with `fault`, otherwise as by default.
    pub fn with_fault(dir: &Path, fault: Fault) -> Intake {
        Self::start_with(dir, Behavior { fault, ..Behavior::default() }, CipherMode::Default)
    }

    /// A mock intake whose config `set` changes.
    pub fn start_config(dir: &Path, set: impl FnOnce(&mut MockConfig)) -> Intake {
        let pki = TestPki::generate(&[]);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_cert_pem).unwrap();
        let mut cfg =
            MockConfig::new("127.0.0.1:0".parse().unwrap(), pki.leaf_cert_pem.clone(), pki.leaf_key_pem.clone());
        set(&mut cfg);
        let mock = MockIntake::start(cfg).unwrap();
        Intake { mock, pki, ca_file }
    }

    pub fn addr(&self) -> SocketAddr {
        self.mock.addr()
    }

    /// Another mock intake at `listen`, serving the same certificate.
    pub fn sibling(&self, listen: SocketAddr) -> MockIntake {
        let cfg = MockConfig::new(listen, self.pki.leaf_cert_pem.clone(), self.pki.leaf_key_pem.clone());
        MockIntake::start(cfg).unwrap_or_else(|e| panic!("mock intake on {listen}: {e}"))
    }
}

/// A TCP port on 127.0.0.1 with nothing listening (connects are refused).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct Relay {
    pub child: Option<Child>,
    pub base: u16,
    pub log_path: PathBuf,
    pub io: String,
}

pub fn relay_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fipsrelay")
}

/// A candidate 16-port range on 127.0.0.1, below the kernel's ephemeral range
/// (32768+) so that client ports in TIME-WAIT never collide with it. Best
/// effort: the relay re-checks, and `Relay::start` tries another on a clash.
pub fn candidate_base(attempt: u32) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mix =
        (std::process::id().wrapping_mul(7919) ^ nanos.wrapping_mul(2654435761)).wrapping_add(n * 97 + attempt * 31);
    20000 + (mix % 750) as u16 * 16
}

/// A range of 16 ports that can all be bound right now.
pub fn free_range() -> u16 {
    for attempt in 0..200 {
        let base = candidate_base(attempt);
        if (0..16).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()) {
            return base;
        }
    }
    panic!("no free 16-port range below 32000");
}

impl Relay {
    /// Starts the relay with `io`, upstream = `upstream` (override_addr),
    /// trusting `ca_file`, plus `extra` TOML lines appended to the sections.
    pub fn start(dir: &Path, io: &str, upstream: SocketAddr, ca_file: &Path, extra: &str) -> Relay {
        Self::start_env(dir, io, upstream, ca_file, extra, &[])
    }

    pub fn start_env(
        dir: &Path,
        io: &str,
        upstream: SocketAddr,
        ca_file: &Path,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        for attempt in 0..20 {
            let base = candidate_base(attempt);
            let config = dir.join(format!("relay-{attempt}.toml"));
            let text = render_config(base, io, upstream, ca_file, extra);
            std::fs::write(&config, text).unwrap();
            let log_path = dir.join(format!("relay-{attempt}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = Command::new(relay_bin());
            cmd.arg("run").arg("--config").arg(&config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            cmd.env_remove("RUST_LOG");
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("spawn fipsrelay");
            let mut relay = Relay { child: Some(child), base, log_path, io: io.to_string() };
            match relay.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return relay,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("relay did not start ({io}):\n{log}"),
            }
        }
        panic!("no free port range found");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            if self.log().contains("fipsrelay ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready after {timeout:?}: {}", self.log()))
    }

    pub fn port(&self, offset: u16) -> u16 {
        self.base + offset
    }

    pub fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(offset)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits for the exit (bounded).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.as_mut().unwrap().kill();
                panic!("relay did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a client connection to a product port.
    pub fn connect(&self, offset: u16) -> Client {
        Client::connect(self.addr(offset))
    }

    /// One request on a fresh connection.
    pub fn request(&self, offset: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut c = self.connect(offset);
        c.request(method, path, headers, body)
    }

    /// GET on the status port.
    pub fn status_page(&self, path: &str) -> String {
        let r = self.request(0, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "status page {path}");
        String::from_utf8(r.body).unwrap()
    }

    /// The value of one Prometheus sample line, polled until `pred` holds.
    pub fn wait_metric(&self, line_prefix: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.status_page("/metrics");
            let v = text
                .lines()
                .find(|l| l.starts_with(line_prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            if pred(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Relay {
    /// The sum of a Prometheus metric over its label sets, polled until
    /// `pred` holds (at most 5 s).
    pub fn wait_metric_sum(&self, name: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.status_page("/metrics");
            let v: f64 = text
                .lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if pred(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `upstream.protocol` for the relays the tests start: `http1` unless
/// FIPSRELAY_TEST_PROTOCOL says otherwise.
pub fn test_protocol() -> String {
    std::env::var("FIPSRELAY_TEST_PROTOCOL").unwrap_or_else(|_| "http1".into())
}

pub fn render_config(base: u16, io: &str, upstream: SocketAddr, ca_file: &Path, extra: &str) -> String {
    // `extra` holds "section.key = value" lines, placed into their sections.
    let mut sections: Vec<(String, Vec<String>)> = vec![
        ("listen".into(), vec![format!("port_range_start = {base}")]),
        ("workers".into(), vec![format!("io = \"{io}\""), "threads = 2".into(), "pin = false".into()]),
        (
            "upstream".into(),
            vec![
                format!("override_addr = \"{upstream}\""),
                format!("ca_file = \"{}\"", ca_file.display()),
                // http1 unless FIPSRELAY_TEST_PROTOCOL says otherwise:
                // scripts/test.sh runs everything once more with "auto".
                format!("protocol = \"{}\"", test_protocol()),
            ],
        ),
        ("log".into(), vec![]),
        ("limits".into(), vec![]),
        ("shutdown".into(), vec![]),
        // Health checks open their own connections to the mock, which would
        // blur the tests that count upstream connections: off unless a test
        // turns them on ("health.enabled = true").
        ("health".into(), vec!["enabled = false".into()]),
        // The admin token lives beside the CA file, never in /etc/fipsrelay.
        ("admin".into(), vec![format!("token_file = \"{}\"", ca_file.with_file_name("admin.token").display())]),
    ];
    for line in extra.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').expect("section.key = value");
        let (section, key) = key.trim().split_once('.').expect("section.key");
        let entry = format!("{} = {}", key.trim(), value.trim());
        match sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => {
                let k = key.trim();
                lines.retain(|l| !l.starts_with(&format!("{k} ")));
                // "section.key = -" removes a key the harness sets.
                if value.trim() != "-" {
                    lines.push(entry);
                }
            }
            None => sections.push((section.to_string(), vec![entry])),
        }
    }
    let mut out = String::new();
    for (s, lines) in sections {
        out.push_str(&format!("[{s}]\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// A plain-TCP HTTP/1.1 client connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { reader: BufReader::new(s) }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(self.stream(), method, path, headers, body).unwrap();
        read_response(&mut self.reader, method == "HEAD").unwrap()
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream().write_all(bytes).unwrap();
    }

    pub fn read_response(&mut self, head: bool) -> std::io::Result<Response> {
        read_response(&mut self.reader, head)
    }

    /// Reads until the relay closes the connection; true if it did.
    pub fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return true,
            }
        }
    }
}

/// Deterministic pseudo-random bytes (no RNG dependency).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
