//! End-to-end harness: a real `fipsrelay` process with a generated config and
//! PKI, a real TLS mock intake (in-process, its own thread and runtime), and
//! plain-TCP clients. The relay runs with the product's defaults, the
//! upstream protocol included (`auto`: HTTP/2 to the mock intake, which
//! offers h2 by ALPN), unless a test pins something. Mock intakes listen on
//! `:0`; the relay's 16 consecutive ports are a range picked at random and
//! picked again on a clash. The relay is ready when its status port answers
//! `GET /health` with 200 from a socket the relay's own process listens on;
//! every wait polls with a deadline.
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

/// Runs the test body once per I/O backend, with the upstream protocol the
/// test's config gives (the product's default unless it pins one).
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

/// Runs the test body once per I/O backend and upstream protocol:
/// `{epoll, uring} × {h1, h2}`, h2 being the product's default (`auto`).
/// For the tests whose behaviour can differ by upstream protocol; the body
/// takes `(io, protocol)` and starts its relay with `protocol.with(extra)`.
#[macro_export]
macro_rules! both_backends_both_protocols {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn uring_h1() {
                if $crate::common::skip_uring() {
                    return;
                }
                ($body)("uring", $crate::common::Protocol::Http1)
            }
            #[test]
            fn uring_h2() {
                if $crate::common::skip_uring() {
                    return;
                }
                ($body)("uring", $crate::common::Protocol::H2)
            }
            #[test]
            fn epoll_h1() {
                ($body)("epoll", $crate::common::Protocol::Http1)
            }
            #[test]
            fn epoll_h2() {
                ($body)("epoll", $crate::common::Protocol::H2)
            }
        }
    };
}

/// Runs the test body once per upstream protocol, on epoll only: for the
/// tests that use one backend by design. The body takes the `Protocol`.
#[macro_export]
macro_rules! both_protocols {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn h1() {
                ($body)($crate::common::Protocol::Http1)
            }
            #[test]
            fn h2() {
                ($body)($crate::common::Protocol::H2)
            }
        }
    };
}

/// The upstream protocol a test's relay speaks to the intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `upstream.protocol = "http1"`: the HTTP/1.1 session pool.
    Http1,
    /// The product's default (no `upstream.protocol` key: `auto`), which
    /// speaks HTTP/2 to an intake offering h2 by ALPN, as the mock intake does.
    H2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::H2];

    /// `extra` relay config lines, with this protocol pinned where it is not the default.
    pub fn with(self, extra: &str) -> String {
        match self {
            Protocol::Http1 => format!("upstream.protocol = \"http1\"\n{extra}"),
            Protocol::H2 => extra.to_string(),
        }
    }

    pub fn is_h2(self) -> bool {
        self == Protocol::H2
    }
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

    /// Another mock intake at `listen`, serving the same certificate. A
    /// port that was free or just given up may be held for a moment by a
    /// connection that took it as its ephemeral port: the bind is tried
    /// again for up to 5 s.
    pub fn sibling(&self, listen: SocketAddr) -> MockIntake {
        let cfg = MockConfig::new(listen, self.pki.leaf_cert_pem.clone(), self.pki.leaf_key_pem.clone());
        let mut started = MockIntake::start(cfg.clone());
        eventually(Duration::from_secs(5), || match &started {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                started = MockIntake::start(cfg.clone());
                started.is_ok()
            }
            _ => true,
        });
        started.unwrap_or_else(|e| panic!("mock intake on {listen}: {e}"))
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
/// (The relay cannot bind `:0` for its 16 consecutive ports, nor take
/// listeners from the test, so this is the one port the harness picks.)
pub fn candidate_base(attempt: u32) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mix =
        (std::process::id().wrapping_mul(7919) ^ nanos.wrapping_mul(2654435761)).wrapping_add(n * 97 + attempt * 31);
    20000 + (mix % 750) as u16 * 16
}

/// True if all 16 ports from `base` can be bound right now.
pub fn range_is_free(base: u16) -> bool {
    (0..16).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
}

/// A range of 16 ports that can all be bound right now.
pub fn free_range() -> u16 {
    for attempt in 0..200 {
        let base = candidate_base(attempt);
        if range_is_free(base) {
            return base;
        }
    }
    panic!("no free 16-port range below 32000");
}

/// How a `fipsrelay run` start ended.
pub enum Started {
    /// `GET /health` on its status port answered 200, from its own socket.
    Ready(Child),
    /// It exited before it was ready.
    Exited(ExitStatus),
}

/// Spawns `fipsrelay run --config config` (stderr to `log_path`, RUST_LOG
/// unset, plus `env`) and waits, at most `timeout`, until it is ready or
/// has exited. Ready: the relay's process owns a listening socket on
/// `base` (its status port, offset 0) and `GET /health` there answers 200,
/// which the relay does once every listener is bound and every worker
/// serves. Owning the socket rules out an answer from another process that
/// holds the port (the relay then exits with "Address already in use").
pub fn spawn_relay(config: &Path, log_path: &Path, base: u16, env: &[(&str, &str)], timeout: Duration) -> Started {
    spawn_relay_limited(config, log_path, base, env, None, timeout)
}

/// [`spawn_relay`], the relay started with `RLIMIT_NOFILE` = `nofile`
/// (soft, hard) when given, as `ulimit -n` would start it.
pub fn spawn_relay_limited(
    config: &Path,
    log_path: &Path,
    base: u16,
    env: &[(&str, &str)],
    nofile: Option<(u64, u64)>,
    timeout: Duration,
) -> Started {
    let log = std::fs::File::create(log_path).unwrap();
    let mut cmd = Command::new(relay_bin());
    cmd.arg("run").arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((soft, hard)) = nofile {
        use std::os::unix::process::CommandExt;
        let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: setrlimit is async-signal-safe; the closure touches only `lim`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn fipsrelay");
    let pid = child.id() as i32;
    let status_port = SocketAddr::from(([127, 0, 0, 1], base));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Started::Exited(status);
        }
        if listens_on(pid, base) && health_status(status_port) == Some(200) {
            return Started::Ready(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fipsrelay neither ready nor exited after {timeout:?}:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status of `GET /health` at `addr`, or None if nothing answers (yet).
pub fn health_status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    send(&mut s, "GET", "/health", &[], b"").ok()?;
    read_response(&mut BufReader::new(s), false).ok().map(|r| r.status)
}

/// The TCP connections in the kernel's table (/proc/net/tcp{,6}) that are
/// established to remote port `port`.
pub fn established_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let remote = f.get(2).and_then(|a| u16::from_str_radix(a.rsplit(':').next()?, 16).ok());
                    // st 01: TCP_ESTABLISHED.
                    remote == Some(port) && f.get(3) == Some(&"01")
                })
                .count()
        })
        .sum()
}

/// True if process `pid` holds a TCP socket listening on `port` (any
/// address): /proc/net/tcp{,6} give the listening sockets' inodes,
/// /proc/`pid`/fd the process's.
pub fn listens_on(pid: i32, port: u16) -> bool {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // st 0A: TCP_LISTEN.
            let inode = f.get(9)?;
            (local_port == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|t| inodes.iter().any(|i| t == Path::new(i)))
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
        Self::start_limited(dir, io, upstream, ca_file, extra, env, None)
    }

    /// [`Relay::start_env`], the relay started with `RLIMIT_NOFILE` =
    /// `nofile` (soft, hard) when given.
    pub fn start_limited(
        dir: &Path,
        io: &str,
        upstream: SocketAddr,
        ca_file: &Path,
        extra: &str,
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) -> Relay {
        let mut tried = 0;
        for attempt in 0..200 {
            let base = candidate_base(attempt);
            if !range_is_free(base) {
                continue;
            }
            let config = dir.join(format!("relay-{tried}.toml"));
            std::fs::write(&config, render_config(base, io, upstream, ca_file, extra)).unwrap();
            let log_path = dir.join(format!("relay-{tried}.log"));
            tried += 1;
            match spawn_relay_limited(&config, &log_path, base, env, nofile, Duration::from_secs(20)) {
                Started::Ready(child) => return Relay { child: Some(child), base, log_path, io: io.to_string() },
                // Another process took one of the ports between the check
                // and the relay's bind: another range.
                Started::Exited(_) if !range_is_free(base) && tried < 20 => continue,
                Started::Exited(status) => panic!(
                    "relay did not start ({io}): exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ),
            }
        }
        panic!("no free port range found");
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
    /// Waits (at most 5 s) until the relay holds no Agent connection on
    /// `product`'s port: the work a test's clients gave it is over, so a
    /// memory reading that follows is not one taken mid-request.
    pub fn wait_idle(&self, product: &str) {
        let open = format!("fipsrelay_open_connections{{product=\"{product}\"}}");
        assert_eq!(self.wait_metric(&open, |v| v == 0.0), 0.0, "{open}");
    }

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
                // No `protocol`: the product's default (auto). Tests pin
                // http1 through `Protocol::with` or their own lines.
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
