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
    // the default seccomp profile applies (it blocks io_uring; `auto` is
    // epoll anyway), epoll said in the start line; the HAProxy config named
    // as ignored.
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
    let start = log.lines().find(|l| l.contains("fipsrelay starting")).unwrap_or_default();
    assert!(start.contains("io=\"epoll\""), "the start line says epoll: {start}");
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

/// The deployment snippets in packaging/deploy, as docs/install.md shows them.
fn snippet(name: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/packaging/deploy/{name}")).unwrap();
    let doc = std::fs::read_to_string(format!("{root}/docs/install.md")).unwrap();
    assert!(doc.contains(text.trim_end()), "docs/install.md does not show packaging/deploy/{name} as it is");
    text
}

fn yaml(name: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&snippet(name)).unwrap_or_else(|e| panic!("packaging/deploy/{name}: {e}"))
}

/// Helm values and the operator's resource: the keys the chart and the
/// operator read (they are not rendered here: neither is installed).
#[test]
fn helm_and_operator_snippets_swap_the_sidecar_image() {
    let v = yaml("helm-values.yaml");
    let fips = &v["fips"];
    assert_eq!(fips["enabled"], true);
    assert_eq!(fips["image"]["repository"].as_str(), Some("registry.example.com/fipsrelay"));
    assert_eq!(fips["image"]["tag"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!((fips["port"].as_u64(), fips["portRange"].as_u64()), (Some(9803), Some(15)));
    assert!(fips.get("customFipsConfig").is_none(), "customFipsConfig is HAProxy config: leave it unset");
    let op = yaml("datadog-agent-operator.yaml");
    assert_eq!(op["kind"].as_str(), Some("DatadogAgent"));
    let f = &op["spec"]["global"]["fips"];
    assert_eq!(f["enabled"], true);
    assert_eq!(
        f["image"]["name"].as_str(),
        Some(format!("registry.example.com/fipsrelay:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(f["useHTTPS"], false);
}

/// The Kubernetes sidecar and the ECS task definition, run: podman starts
/// the image with the manifest's securityContext and env, its exec probes
/// run inside the container as the kubelet runs them, and so does the ECS
/// healthCheck command.
#[test]
fn kubernetes_and_ecs_snippets_run_as_written() {
    let k8s = yaml("kubernetes-sidecar.yaml");
    let containers = k8s["spec"]["template"]["spec"]["containers"].as_sequence().unwrap().clone();
    let by_name = |n: &str| containers.iter().find(|c| c["name"].as_str() == Some(n)).unwrap().clone();
    let (agent, relay) = (by_name("agent"), by_name("fips-proxy"));
    let env = |c: &serde_yaml::Value, k: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(k))
            .and_then(|e| e["value"].as_str().map(String::from))
    };
    assert_eq!(env(&agent, "DD_FIPS_ENABLED").as_deref(), Some("true"));
    assert_eq!(env(&agent, "DD_FIPS_HTTPS").as_deref(), Some("false"));
    assert_eq!(env(&agent, "DD_FIPS_PORT_RANGE_START"), env(&relay, "DD_FIPS_PORT_RANGE_START"));
    let sc = &relay["securityContext"];
    assert_eq!((sc["runAsNonRoot"].as_bool(), sc["runAsUser"].as_u64()), (Some(true), Some(10001)));
    assert_eq!(
        (sc["readOnlyRootFilesystem"].as_bool(), sc["allowPrivilegeEscalation"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    // Exec probes (the kubelet's httpGet would not reach the pod's loopback).
    let probe = |kind: &str| -> Vec<String> {
        assert!(relay[kind].get("httpGet").is_none(), "{kind} must not be httpGet");
        let cmd = relay[kind]["exec"]["command"].as_sequence().unwrap_or_else(|| panic!("{kind} is not exec"));
        cmd.iter().map(|c| c.as_str().unwrap().to_string()).collect()
    };
    let (live, ready) = (probe("livenessProbe"), probe("readinessProbe"));
    assert_eq!(live, ["/usr/bin/fipsrelay", "probe", "--check", "live"]);
    assert_eq!(ready, ["/usr/bin/fipsrelay", "probe"]);

    let ecs: serde_json::Value = serde_json::from_str(&snippet("ecs-task-definition.json")).unwrap();
    let defs = ecs["containerDefinitions"].as_array().unwrap();
    let fips = defs.iter().find(|c| c["name"] == "fips-proxy").unwrap();
    assert_eq!(fips["essential"], true);
    assert_eq!(fips["readonlyRootFilesystem"], true);
    assert_eq!(fips["user"], "10001:10001");
    assert_eq!(fips["linuxParameters"]["capabilities"]["drop"][0], "ALL");
    let ports: Vec<u64> =
        fips["portMappings"].as_array().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert_eq!(ports, (9803..=9818).collect::<Vec<u64>>());
    let health: Vec<String> =
        fips["healthCheck"]["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(health[0], "CMD");
    let agent_ecs = defs.iter().find(|c| c["name"] == "datadog-agent").unwrap();
    assert_eq!(agent_ecs["dependsOn"][0]["containerName"], "fips-proxy");

    if let Some(why) = cannot_run_containers() {
        eprintln!("SKIPPED the run half: cannot run containers on this machine: {why}");
        return;
    }
    // The manifests' image name, built from this tree. The port range moves
    // off 9803 so that the test cannot clash with a relay on this machine;
    // probes move with it.
    let image = relay["image"].as_str().unwrap().to_string();
    let (repo, tag_version) = image.rsplit_once(':').unwrap();
    assert_eq!(tag_version, env!("CARGO_PKG_VERSION"));
    let name = format!("fipsrelay-deploy-{}", std::process::id());
    let _cleanup = Cleanup { container: name.clone(), image: repo.to_string() };
    let root = env!("CARGO_MANIFEST_DIR");
    let built = run(Command::new(format!("{root}/scripts/image.sh")).args(["--binary", relay_bin(), "--tag", repo]));
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let base = free_range();
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "run", "-d", "--name", &name, "--network", "host", "--pull", "never"]);
    cmd.args(["--user", &format!("{}:{}", sc["runAsUser"].as_u64().unwrap(), sc["runAsGroup"].as_u64().unwrap())]);
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        cmd.arg("--read-only");
    }
    for cap in sc["capabilities"]["drop"].as_sequence().unwrap() {
        cmd.args(["--cap-drop", cap.as_str().unwrap()]);
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    for e in relay["env"].as_sequence().unwrap() {
        let (k, mut v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap().to_string());
        if k == "DD_FIPS_PORT_RANGE_START" {
            v = base.to_string();
        }
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    cmd.args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=512:512", &image]);
    let started = run(&mut cmd);
    if !started.status.success() {
        let err = String::from_utf8_lossy(&started.stderr);
        panic!("podman run {image}: {err}");
    }
    // The kubelet runs exec probes inside the container, with its environment.
    let exec_probe = |cmd: &[String]| run(Command::new("podman").args(["exec", &name]).args(cmd));
    assert!(
        eventually(Duration::from_secs(30), || exec_probe(&ready).status.success()),
        "readiness probe {ready:?} never passed"
    );
    let live_out = exec_probe(&live);
    assert!(live_out.status.success(), "liveness probe {live:?}: {}", String::from_utf8_lossy(&live_out.stderr));
    assert!(stdout(&live_out).contains(&format!(":{base}/health/live: HTTP/1.1 200")), "{}", stdout(&live_out));
    // ECS runs the healthCheck command inside the container.
    let exec = run(Command::new("podman").args(["exec", &name]).args(&health[1..]));
    assert!(
        exec.status.success(),
        "ECS healthCheck {:?}: {}{}",
        &health[1..],
        stdout(&exec),
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(stdout(&exec).contains("/health: HTTP/1.1 200"), "{}", stdout(&exec));
}
