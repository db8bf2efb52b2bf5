//! Odd files the config names (a device, a FIFO, a directory, a file too
//! large, a garbage CA, an unknown run.user, a token others can read, a
//! missing proxy credentials file): `check-config` and `run` both refuse
//! them, with the same message naming the key and the path, and neither
//! hangs nor aborts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `fipsrelay <cmd> --config config`, killed (and the test failed)
/// after 15 s: a FIFO or a device must never block it.
fn bounded(cmd: &str, config: &Path) -> Output {
    let mut child = Command::new(relay_bin())
        .args([cmd, "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("`fipsrelay {cmd}` hung on {}: {}", config.display(), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The `fipsrelay: error:` line of a failed command.
fn error_line(cmd: &str, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`fipsrelay {cmd}` succeeded:\n{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.code().is_some(), "`fipsrelay {cmd}` died of a signal ({}): {err}", out.status);
    err.lines().find(|l| l.starts_with("fipsrelay: error:")).unwrap_or_else(|| panic!("no error line: {err}")).into()
}

/// Both commands refuse `config` with the same error, which holds every one of `want`.
fn both_refuse(case: &str, config: &Path, want: &[&str]) {
    let check = error_line("check-config", &bounded("check-config", config));
    let run = error_line("run", &bounded("run", config));
    assert_eq!(check, run, "{case}: check-config and run say different things");
    for w in want {
        assert!(check.contains(w), "{case}: {w:?} missing from: {check}");
    }
}

struct Case {
    dir: TestDir,
    ca: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = TestDir::new();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TestPki::generate(&[]).ca_cert_pem).unwrap();
        Case { dir, ca }
    }

    /// A config trusting `ca_file`, the admin token in the test's directory, plus `extra`.
    fn config(&self, ca_file: &Path, extra: &str) -> PathBuf {
        let token = self.dir.path().join("admin.token");
        let extra = format!("admin.token_file = \"{}\"\n{extra}", token.display());
        let path = self.dir.path().join("c.toml");
        std::fs::write(&path, render_config(free_range(), "epoll", refused_addr(), ca_file, &extra)).unwrap();
        path
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }
}

#[test]
fn device_fifo_directory_and_oversized_ca_files_are_refused() {
    let case = Case::new();
    let zero = case.config(Path::new("/dev/zero"), "");
    both_refuse("ca_file = /dev/zero", &zero, &["upstream.ca_file", "/dev/zero", "character device", "PEM file"]);

    let fifo = case.fifo("ca.fifo");
    let config = case.config(&fifo, "");
    both_refuse("ca_file = FIFO", &config, &["upstream.ca_file", &fifo.display().to_string(), "FIFO"]);

    let config = case.config(case.dir.path(), "");
    both_refuse("ca_file = directory", &config, &["upstream.ca_file", "a directory"]);

    let big = case.dir.path().join("big.pem");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(17 << 20).unwrap();
    let config = case.config(&big, "");
    both_refuse("ca_file > 16 MiB", &config, &["upstream.ca_file", "over the 16777216-byte limit"]);

    let garbage = case.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let config = case.config(&garbage, "");
    both_refuse("garbage ca_file", &config, &["upstream.ca_file", "holds no certificate"]);

    let config = case.config(&case.dir.path().join("missing.pem"), "");
    both_refuse("missing ca_file", &config, &["upstream.ca_file", "No such file"]);
}

#[test]
fn fifo_directory_and_oversized_configs_are_refused() {
    let case = Case::new();
    let fifo = case.fifo("c.fifo");
    both_refuse("config = FIFO", &fifo, &["config file", &fifo.display().to_string(), "FIFO", "--config"]);

    both_refuse("config = directory", case.dir.path(), &["config file", "a directory"]);

    let big = case.dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat((1 << 20) + 1)).unwrap();
    both_refuse("config > 1 MiB", &big, &["config file", "over the 1048576-byte limit"]);
}

#[test]
fn unknown_user_loose_token_and_missing_credentials_are_refused() {
    let case = Case::new();
    if unsafe { libc::geteuid() } == 0 {
        // run.user is looked up when started as root (as the relay drops to it).
        let config = case.config(&case.ca, "run.user = \"no-such-user-fipsrelay\"");
        both_refuse("unknown run.user", &config, &["run.user", "no-such-user-fipsrelay", "no such user"]);
    } else {
        eprintln!("SKIPPED: unknown run.user (looked up only when started as root)");
    }

    let token = case.dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = case.config(&case.ca, "");
    both_refuse("token mode 0644", &config, &["admin.token_file", "0644", "chmod 600"]);
    std::fs::remove_file(&token).unwrap();
    let fifo = case.fifo("admin.token");
    both_refuse("token = FIFO", &config, &["admin.token_file", &fifo.display().to_string(), "FIFO"]);
    std::fs::remove_file(&fifo).unwrap();

    let missing = case.dir.path().join("no-credentials");
    let proxy = format!(
        "upstream.override_addr = -\nupstream.proxy.url = \"http://127.0.0.1:3128\"\nupstream.proxy.credentials_file = \"{}\"",
        missing.display()
    );
    let config = case.config(&case.ca, &proxy);
    both_refuse(
        "missing credentials_file",
        &config,
        &["upstream.proxy.credentials_file", &missing.display().to_string(), "No such file"],
    );
    // A good config still passes both checks in check-config.
    let config = case.config(&case.ca, "");
    let out = bounded("check-config", &config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("# start checks passed"));
    assert!(!token.exists(), "check-config must not create the admin token");
}
