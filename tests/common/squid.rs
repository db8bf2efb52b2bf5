//! A real Squid (Debian's `squid`) on 127.0.0.1 with a generated config:
//! CONNECT only, to an allow-list of intake domains, with `basic_ncsa_auth`
//! credentials when asked, an https_port when given a certificate, and a
//! hosts file that maps the intake names to 127.0.0.1 (no DNS here).
//!
//! Squid missing fails the test (scripts/setup.sh installs it), unless
//! FIPSRELAY_TEST_SKIP_SQUID=1 says so, which the test prints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SQUID: &str = "/usr/sbin/squid";
pub const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

/// Whether Squid tests should be skipped (and say so); panics when Squid
/// is missing and nobody asked to skip.
pub fn skip_squid() -> bool {
    if std::env::var("FIPSRELAY_TEST_SKIP_SQUID").as_deref() == Ok("1") {
        eprintln!("skipping: FIPSRELAY_TEST_SKIP_SQUID=1");
        return true;
    }
    assert!(
        Path::new(SQUID).exists() && Path::new(NCSA_AUTH).exists(),
        "Squid is not installed ({SQUID}, {NCSA_AUTH}): run scripts/setup.sh (apt-get install squid apache2-utils), or set FIPSRELAY_TEST_SKIP_SQUID=1"
    );
    false
}

/// How to run Squid.
pub struct SquidConfig {
    /// (user, password) for basic_ncsa_auth; None = no authentication.
    pub user: Option<(String, String)>,
    /// Domains CONNECT may go to (Squid `dstdomain`, e.g. ".ddog-gov.com").
    pub allow: Vec<String>,
    /// The one port CONNECT may go to (the intake's 443 in production).
    pub allow_port: u16,
    /// Names the hosts file maps to 127.0.0.1.
    pub hosts: Vec<String>,
    /// (certificate chain PEM, key PEM) to also serve an https_port.
    pub tls: Option<(String, String)>,
}

pub struct Squid {
    child: Option<Child>,
    /// Holds the config, logs, passwords (kept readable by Squid's user).
    _dir: tempfile::TempDir,
    dir: PathBuf,
    pub port: u16,
    pub tls_port: Option<u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Squid {
    pub fn start(cfg: &SquidConfig) -> Squid {
        // Squid started as root runs as the `proxy` user: its files must be
        // readable and its log directory writable by that user.
        let dir = tempfile::Builder::new().prefix("fipsrelay-squid-").tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let root = unsafe { libc::geteuid() } == 0;
        let mut squid = Squid { child: None, _dir: dir, dir: path.clone(), port: 0, tls_port: None };
        squid.write_files(cfg, root);
        std::fs::write(squid.dir.join("squid.conf.in"), squid.config_text(cfg)).unwrap();
        for _ in 0..10 {
            squid.port = free_port();
            squid.tls_port = cfg.tls.as_ref().map(|_| free_port());
            if squid.launch() {
                return squid;
            }
        }
        panic!("squid did not start: {}", squid.cache_log());
    }

    fn write_files(&self, cfg: &SquidConfig, root: bool) {
        use std::os::unix::fs::PermissionsExt;
        let d = &self.dir;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hosts: String = cfg.hosts.iter().map(|h| format!("127.0.0.1 {h}\n")).collect();
        std::fs::write(d.join("hosts"), hosts).unwrap();
        if let Some((user, password)) = &cfg.user {
            let out = Command::new("htpasswd")
                .args(["-b", "-c"])
                .arg(d.join("passwd"))
                .args([user, password])
                .output()
                .expect("htpasswd (apache2-utils) is installed by scripts/setup.sh");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some((cert, key)) = &cfg.tls {
            std::fs::write(d.join("proxy-cert.pem"), cert).unwrap();
            std::fs::write(d.join("proxy-key.pem"), key).unwrap();
        }
        for entry in std::fs::read_dir(d).unwrap() {
            let p = entry.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        if root {
            let name = std::ffi::CString::new("proxy").unwrap();
            let pw = unsafe { libc::getpwnam(name.as_ptr()) };
            assert!(!pw.is_null(), "no `proxy` user for Squid to run as");
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
    }

    fn config_text(&self, cfg: &SquidConfig) -> String {
        let d = self.dir.display();
        // The ports are filled in at each launch.
        let mut c = "http_port 127.0.0.1:@PORT@\n".to_string();
        if cfg.tls.is_some() {
            c += &format!("https_port 127.0.0.1:@TLS_PORT@ tls-cert={d}/proxy-cert.pem tls-key={d}/proxy-key.pem\n");
        }
        c += &format!(
            "pid_filename none\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\n\
             hosts_file {d}/hosts\ndns_nameservers 127.0.0.1\npinger_enable off\nshutdown_lifetime 0 seconds\n\
             coredump_dir {d}\nacl CONNECT method CONNECT\n"
        );
        let domains = if cfg.allow.is_empty() { ".".to_string() } else { cfg.allow.join(" ") };
        c += &format!(
            "acl intake_port port {}\nacl intake dstdomain {domains}\nhttp_access deny !CONNECT\n\
             http_access deny !intake_port\nhttp_access deny !intake\n",
            cfg.allow_port
        );
        if cfg.user.is_some() {
            c += &format!(
                "auth_param basic program {NCSA_AUTH} {d}/passwd\nauth_param basic realm fipsrelay-test\n\
                 acl authed proxy_auth REQUIRED\nhttp_access allow authed\n"
            );
        } else {
            c += "http_access allow all\n";
        }
        c + "http_access deny all\n"
    }

    /// Starts Squid in the foreground; false if its ports were taken.
    fn launch(&mut self) -> bool {
        let conf = self.dir.join("squid.conf");
        let text = std::fs::read_to_string(self.dir.join("squid.conf.in"))
            .expect("written by start")
            .replace("@PORT@", &self.port.to_string())
            .replace("@TLS_PORT@", &self.tls_port.map(|p| p.to_string()).unwrap_or_default());
        std::fs::write(&conf, text).unwrap();
        let _ = std::fs::remove_file(self.dir.join("cache.log"));
        let child = Command::new(SQUID)
            .args(["-N", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn squid");
        self.child = Some(child);
        // Ready: Squid's process listens on its port(s). Exited while
        // another process holds one of them: a clash, other ports.
        let deadline = Instant::now() + Duration::from_secs(15);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        while Instant::now() < deadline {
            let pid = self.child.as_ref().unwrap().id() as i32;
            if ports.iter().all(|&p| super::listens_on(pid, p)) {
                return true;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                if ports.iter().any(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err()) {
                    return false;
                }
                panic!("squid exited with {status}:\n{}", self.cache_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("squid not ready after 15 s:\n{}", self.cache_log());
    }

    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default()
    }

    /// The access log's lines (Squid writes a line when a tunnel ends).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Stops Squid (SIGTERM, no grace period) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts Squid again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch() {
            assert!(Instant::now() < deadline, "squid cannot bind its port again: {}", self.cache_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port.expect("squid started with tls"))
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}
