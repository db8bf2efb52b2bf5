//! `fipsrelay reload`: asks the running relay through its admin API and
//! exits with the outcome: 0 and the relay's answer when the config applied
//! (in place, or by a restart in place once the new process is ready), 1
//! and the reason when the relay refused it or no relay answers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `fipsrelay reload --config config`, killed (and the test failed) after 60 s.
fn reload(config: &Path) -> Output {
    let mut child = Command::new(relay_bin())
        .args(["reload", "--wait", "30", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`fipsrelay reload` did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn texts(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The config file the harness wrote for `relay`.
fn config_path(relay: &Relay) -> PathBuf {
    relay.log_path.with_extension("toml")
}

#[test]
fn reload_reports_applied_refused_and_impossible() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "");
    let config = config_path(&relay);
    let original = std::fs::read_to_string(&config).unwrap();

    // Applied in place: 0, and the relay's answer.
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"warn\"\n")).unwrap();
    let out = reload(&config);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("config reloaded from") && stdout.contains("log.level = \"warn\" applied"), "{stdout}");

    // Refused: an invalid file is 400, nothing applied; exit 1 with the reason.
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"loud\"\n")).unwrap();
    // `reload` reads the same file to find the port: an invalid file fails
    // there first, with the same config error the relay would give.
    let out = reload(&config);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("log.level"), "{stderr}");

    // Impossible: a restart-only key whose new value cannot work is 409.
    let ca_line = original.lines().find(|l| l.starts_with("ca_file")).unwrap();
    std::fs::write(&config, original.replace(ca_line, "ca_file = \"/nonexistent/ca.pem\"")).unwrap();
    let out = reload(&config);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("the relay did not reload (HTTP/1.1 409 Conflict)"), "{stderr}");
    assert!(stderr.contains("nothing applied") && stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    assert_eq!(relay.request(0, "GET", "/health", &[], b"").status, 200, "the relay stopped");
}

#[test]
fn reload_refused_by_the_relay_exits_1_with_its_answer() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "");
    let config = config_path(&relay);
    let original = std::fs::read_to_string(&config).unwrap();
    // The command reads a valid copy (same port and token), while the file
    // the relay re-reads is invalid: the refusal is the relay's, 400.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &original).unwrap();
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"loud\"\n")).unwrap();
    let out = reload(&copy);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("the relay did not reload (HTTP/1.1 400 Bad Request)"), "{stderr}");
    assert!(stderr.contains("config not reloaded") && stderr.contains("log.level"), "{stderr}");
    assert!(!stderr.contains(&std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_string()));
}

#[test]
fn reload_waits_for_a_restart_in_place() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "");
    let config = config_path(&relay);
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("threads = 2", "threads = 1")).unwrap();
    let out = reload(&config);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}\n{}", relay.log());
    assert!(stdout.contains("restarting in place") && stdout.contains("workers.threads changed"), "{stdout}");
    assert!(stdout.contains("restarted in place: ready again after"), "{stdout}");
    // Ready means the new process serves: it logged the take-over, same PID.
    assert!(relay.log().contains("restarted in place: took over"), "{}", relay.log());
    assert_eq!(relay.request(0, "GET", "/health", &[], b"").status, 200);
    let health = String::from_utf8_lossy(&relay.request(0, "GET", "/health", &[], b"").body).into_owned();
    assert!(health.contains("\"workers\":1"), "{health}");
}

#[test]
fn reload_without_a_running_relay_fails_clearly() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TestPki::generate(&[]).ca_cert_pem).unwrap();
    let base = free_range();
    std::fs::write(&config, render_config(base, "epoll", refused_addr(), &ca, "")).unwrap();
    let out = reload(&config);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("no relay answers on 127.0.0.1:{base}")), "{stderr}");
    assert!(stderr.contains("is it running"), "{stderr}");

    std::fs::write(&config, render_config(base, "epoll", refused_addr(), &ca, "admin.enabled = false")).unwrap();
    let out = reload(&config);
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("admin.enabled = false") && stderr.contains("SIGHUP"), "{stderr}");
}

/// The unit reloads through `fipsrelay reload` (so `systemctl reload` fails
/// on a refusal), with the same config as `ExecStart`; `systemd-analyze
/// verify` accepts it where available.
#[test]
fn unit_reloads_through_the_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("packaging/fipsrelay.service")).unwrap();
    let exec = |key: &str| unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}")).to_string();
    assert_eq!(
        exec("ExecReload="),
        "ExecReload=/usr/local/bin/fipsrelay reload --config /etc/fipsrelay/fipsrelay.toml"
    );
    assert!(exec("ExecStart=").ends_with("run --config /etc/fipsrelay/fipsrelay.toml"));
    assert!(!unit.contains("$MAINPID") && !unit.contains("kill -HUP"), "{unit}");
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze verify (not installed)");
        return;
    }
    let dir = TestDir::new();
    let copy = dir.path().join("fipsrelay.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/fipsrelay", relay_bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
