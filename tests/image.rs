//! The container image end to end: `scripts/image.sh` builds it FROM
//! scratch (with this build's binary), podman runs it the way the Datadog
//! sidecar runs (read-only root, non-root numeric user, no capabilities, the
//! runtime's default seccomp profile), and requests go through it to a mock
//! intake on the host.
//!
//! A machine that cannot run containers (no podman or buildah, or
//! `podman info` fails) makes this test say so and skip: it never passes
//! silently.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const SERIES: &str = "/api/v2/series";
const METRICS_HOST: &str = "metrics.agent.ddog-gov.com";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why containers cannot run here, if they cannot.
fn cannot_run_containers() -> Option<String> {
    for tool in ["podman", "buildah"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed (apt-get install podman buildah runc)"));
        }
    }
    let info = Command::new("podman").args(["--runtime", "runc", "info"]).output().ok()?;
    if !info.status.success() {
        return Some(format!("podman info failed: {}", String::from_utf8_lossy(&info.stderr).trim()));
    }
    None
}

/// Removes the container and the test's image tags, whatever happens.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "2", &self.container]).output();
        for tag in ["latest", env!("CARGO_PKG_VERSION")] {
            let _ = Command::new("podman").args(["rmi", "-f", &format!("{}:{tag}", self.image)]).output();
        }
    }
}

fn readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn the_image_runs_read_only_as_non_root_on_epoll_and_relays() {
    if let Some(why) = cannot_run_containers() {
        eprintln!("SKIPPED: cannot run containers on this machine: {why}");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let tag = format!("fipsrelay-test-{}", std::process::id());
    let name = format!("{tag}-run");
    let _cleanup = Cleanup { container: name.clone(), image: tag.clone() };

    // 1. Build, with the binary under test.
    let root = env!("CARGO_MANIFEST_DIR");
    let built = run(Command::new(format!("{root}/scripts/image.sh")).args(["--binary", relay_bin(), "--tag", &tag]));
    assert!(built.status.success(), "image.sh failed:\n{}\n{}", stdout(&built), String::from_utf8_lossy(&built.stderr));
    let user = stdout(&run(Command::new("podman").args(["image", "inspect", "-f", "{{.Config.User}}", &tag])));
    assert_eq!(user, "10001:10001");
    // A machine where podman is installed but no container can start
    // (nested without privileges) says so here and skips.
    let version = run(Command::new("podman").args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "none",
        &format!("{tag}:latest"),
        "version",
    ]));
    if !version.status.success() {
        eprintln!(
            "SKIPPED: cannot run containers on this machine: {}",
            String::from_utf8_lossy(&version.stderr).trim()
        );
        return;
    }
    assert!(stdout(&version).contains("fips: enabled (AWS-LC FIPS 3.1.0 static"), "{}", stdout(&version));

    // 2. Run it as the sidecar runs: the config points at the mock intake on
    // the host; the port range comes from the Datadog image's variable; a
    // Helm customFipsConfig is mounted where that image reads it.
    let base = free_range();
    let config = dir.path().join("fipsrelay.toml");
    std::fs::write(
        &config,
        format!(
            "[workers]\nthreads = 2\npin = false\n[upstream]\noverride_addr = \"{}\"\nca_file = \"/etc/fipsrelay/ca.pem\"\n[admin]\nenabled = false\n",
            intake.addr()
        ),
    )
    .unwrap();
    let haproxy = dir.path().join("datadog-fips-proxy.cfg");
    std::fs::write(&haproxy, "global\n  log stdout format raw local0\n").unwrap();
    for f in [&config, &intake.ca_file, &haproxy] {
        readable(f);
    }
    let mount = |from: &Path, to: &str| format!("{}:{to}:ro", from.display());
    let started = run(Command::new("podman").args([
        "--runtime",
        "runc",
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=512:512",
        "-e",
        &format!("DD_FIPS_PORT_RANGE_START={base}"),
        "-v",
        &mount(&config, "/etc/fipsrelay/fipsrelay.toml"),
        "-v",
        &mount(&intake.ca_file, "/etc/fipsrelay/ca.pem"),
        "-v",
        &mount(&haproxy, "/etc/datadog-fips-proxy/datadog-fips-proxy.cfg"),
        &format!("{tag}:latest"),
    ]));
    assert!(started.status.success(), "podman run: {}", String::from_utf8_lossy(&started.stderr));
    let logs = || {
        let out = run(Command::new("podman").args(["logs", &name]));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // Ready (readiness probe) once listening.
    let health = format!("127.0.0.1:{base}");
    let ready = eventually(Duration::from_secs(30), || {
        std::net::TcpStream::connect(&health).is_ok()
            && Client::connect(health.parse().unwrap()).request("GET", "/health", &[], b"").status == 200
    });
    assert!(ready, "the container never became ready:\n{}", logs());

    // 3. Requests through it reach the intake byte for byte.
    let status_addr = health.parse().unwrap();
    let live = Client::connect(status_addr).request("GET", "/health/live", &[], b"");
    assert_eq!(live.status, 200);
    let metrics_port = std::net::SocketAddr::from(([127, 0, 0, 1], base + 1));
    for (i, len) in [10usize, 100_000].into_iter().enumerate() {
        let body = payload(len, i as u64);
        let r = Client::connect(metrics_port).request("POST", SERIES, &[("DD-API-KEY", FAKE_KEY)], &body);
        assert_eq!(r.status, 202, "{}", logs());
        let rec = intake.mock.records().pop().unwrap();
        assert_eq!((rec.sni.as_deref(), rec.body_hash), (Some(METRICS_HOST), body_hash(&body)));
    }

    // 4. What the process is: uid 10001, no capabilities, read-only root;
    // io_uring blocked by the default seccomp profile, so epoll, said in
    // the start line; the HAProxy config named as ignored.
    let pid = stdout(&run(Command::new("podman").args(["inspect", "-f", "{{.State.Pid}}", &name])));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert!(field("Uid:").split_whitespace().skip(1).all(|u| u == "10001"), "{}", field("Uid:"));
    assert!(field("Gid:").split_whitespace().skip(1).all(|g| g == "10001"), "{}", field("Gid:"));
    assert_eq!(field("CapEff:").split_whitespace().nth(1), Some("0000000000000000"));
    assert_eq!(field("NoNewPrivs:").split_whitespace().nth(1), Some("1"));
    assert_eq!(field("Seccomp:").split_whitespace().nth(1), Some("2"), "the default seccomp profile applies");
    let ro = stdout(&run(Command::new("podman").args(["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", &name])));
    assert_eq!(ro, "true");
    let log = logs();
    assert!(log.contains("io_uring unavailable; using the epoll backend") && log.contains("seccomp"), "{log}");
    assert!(log.contains("io=\"epoll\""), "{log}");
    assert!(
        log.contains("/etc/datadog-fips-proxy/datadog-fips-proxy.cfg is HAProxy configuration for the Datadog FIPS Proxy (Helm customFipsConfig) and is ignored"),
        "{log}"
    );
    assert!(log.contains(&format!("listen=127.0.0.1:{base}-{}", base + 15)), "{log}");

    // 5. It stops cleanly on SIGTERM (podman stop), as a pod shutdown does.
    let stopped = run(Command::new("podman").args(["stop", "-t", "10", &name]));
    assert!(stopped.status.success());
    let code = stdout(&run(Command::new("podman").args(["inspect", "-f", "{{.State.ExitCode}}", &name])));
    assert_eq!(code, "0", "{}", logs());
}
