//! One-shot commands and config checks: `check-config` names a bad key and
//! prints the port table, `version` and the binary show the FIPS module
//! only, and `diagnose` checks every upstream host and names the failures.

mod common;

use common::*;

#[test]
fn bad_config_names_the_key_and_fails() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[upstream]\nsite = \"ddog-gov.com\"\nconect_timeout = \"5s\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conect_timeout") && err.contains("line 3"), "{err}");

    std::fs::write(&config, "[upstream]\nconnect_timeout = \"soon\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.connect_timeout"), "{err}");

    let out = std::process::Command::new(relay_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .env("DD_FIPS_PORT_RANGE_START", "abc")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("DD_FIPS_PORT_RANGE_START"));
}

#[test]
fn check_config_prints_port_table_with_env_overrides() {
    let out = std::process::Command::new(relay_bin())
        .arg("check-config")
        .env("DD_FIPS_PORT_RANGE_START", "10000")
        .env("DD_SITE", "datadoghq.eu")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# 10001  metrics"), "{text}");
    assert!(text.contains("metrics.agent.datadoghq.eu"), "{text}");
    assert!(text.contains("# 10015  network_devices_netflow      ndmflow-intake.datadoghq.eu"), "{text}");
}

/// A typo in `upstream.site` (or `DD_SITE`) is refused: the key, the known
/// sites and the nearest one are named, and nothing starts.
#[test]
fn unknown_site_is_refused_by_check_config() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[upstream]\nsite = \"datadoghq.co\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.site = \"datadoghq.co\" is not a Datadog site"), "{err}");
    assert!(err.contains("did you mean \"datadoghq.com\"?") && err.contains("ddog-gov.com (US1-FED)"), "{err}");
    let out =
        std::process::Command::new(relay_bin()).arg("check-config").env("DD_SITE", "ddog-gov.co").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"ddog-gov.co\" is not a Datadog site") && err.contains("DD_SITE"), "{err}");
}

#[test]
fn version_reports_fips_module() {
    let out = std::process::Command::new(relay_bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fips: enabled (AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated)"),
        "{text}"
    );
    assert!(text.contains("TLS13_AES_256_GCM_SHA384") && !text.contains("CHACHA"), "{text}");
    assert!(text.contains("io_uring: "), "{text}");
}

/// `version` names the commit the binary was built from: this checkout's
/// HEAD (`-dirty` with changes), or `unknown` outside git; `--version` too.
#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(relay_bin()).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let commit =
        text.lines().find_map(|l| l.strip_prefix("commit: ")).unwrap_or_else(|| panic!("no commit line: {text}"));
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        // Built in this checkout: its HEAD when it was built, which may be
        // older than HEAD now only if the tree changed since (then dirty).
        Some(head) => {
            let hash = commit.trim_end_matches("-dirty");
            assert!(hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
            assert!(hash == head || commit.ends_with("-dirty"), "commit {commit}, HEAD {head}");
        }
        None => assert_eq!(commit, option_env!("FIPSRELAY_BUILD_COMMIT").unwrap_or("unknown")),
    }
    let out = std::process::Command::new(relay_bin()).arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(line.trim(), format!("fipsrelay {} (commit {commit})", env!("CARGO_PKG_VERSION")));
}

/// Only the FIPS module encrypts: the relay binary links the pinned FIPS
/// build of AWS-LC (symbols prefixed `aws_lc_fips_0_13_11_`) and none of the
/// non-FIPS AWS-LC that rustls' `aws_lc_rs` feature also compiles
/// (`aws_lc_0_<version>_`).
#[test]
fn binary_links_only_the_fips_module() {
    let bin = std::fs::read(relay_bin()).unwrap();
    let has = |needle: &[u8]| bin.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"aws_lc_fips_0_13_11_"), "the pinned FIPS module's symbols are missing");
    assert!(!has(b"aws_lc_0_"), "the binary links a non-FIPS AWS-LC (aws_lc_0_* symbols)");
}

#[test]
fn unvalidated_module_key_is_checked() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[crypto]\nallow_unvalidated_module = \"yes\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_unvalidated_module"), "{err}");
    std::fs::write(&config, "[crypto]\nallow_unvalidated_module = true\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("allow_unvalidated_module = true"), "{text}");
}

#[test]
fn non_loopback_listen_needs_opt_in() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[listen]\naddress = \"0.0.0.0\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_non_local"));
}

/// A diagnose config: the mock intake's address and CA, a free listen range
/// (so no relay of another test answers there), and `extra` lines.
fn diagnose_config(
    dir: &std::path::Path,
    name: &str,
    intake: &Intake,
    ca: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    diagnose_config_at(dir, name, intake, ca, free_range(), extra)
}

fn diagnose_config_at(
    dir: &std::path::Path,
    name: &str,
    intake: &Intake,
    ca: &std::path::Path,
    base: u16,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[listen]\nport_range_start = {base}\n[upstream]\noverride_addr = \"{}\"\nca_file = \"{}\"\n{extra}",
            intake.addr(),
            ca.display()
        ),
    )
    .unwrap();
    path
}

fn diagnose(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out =
        std::process::Command::new(relay_bin()).args(["diagnose", "--config"]).arg(config).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn diagnose_checks_every_upstream_and_names_failures() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let good = diagnose_config(dir.path(), "good.toml", &intake, &intake.ca_file, "");
    let out = std::process::Command::new(relay_bin())
        .args(["diagnose", "--config"])
        .arg(&good)
        .args(["--api-key", FAKE_KEY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("16 of 16 upstream hosts passed"), "{text}");
    assert!(text.contains("PASS api.ddog-gov.com") && text.contains("GET /api/v1/validate 202"), "{text}");
    assert!(text.contains("TLSv1_3 TLS13_AES_256_GCM_SHA384"), "{text}");
    // The protocol the relay would speak (h2 by default, as ALPN picks), and spoken.
    assert!(text.contains("# protocol: upstream.protocol = auto: ALPN offers h2 and http/1.1"), "{text}");
    assert!(text.contains("protocol:    h2 (the intake picked h2 by ALPN)"), "{text}");
    assert!(
        text.contains("GET /api/v1/validate 202 (over HTTP/2)") && text.contains("HEAD / 202 (over HTTP/2)"),
        "{text}"
    );
    assert!(text.contains("NOTE relay: nothing listens on 127.0.0.1:"), "{text}");
    assert!(!text.contains(FAKE_KEY), "the API key must not be printed");
    let validated = intake.mock.records().into_iter().filter(|r| r.path == "/api/v1/validate").collect::<Vec<_>>();
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0].header("dd-api-key"), Some(FAKE_KEY));
    assert_eq!(validated[0].sni.as_deref(), Some("api.ddog-gov.com"));

    // A CA that did not sign the intake's certificate, as a TLS-inspecting
    // proxy's would be: UnknownIssuer.
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, loadgen::pki::unrelated_ca("an inspecting proxy's CA").unwrap()).unwrap();
    let bad = diagnose_config(dir.path(), "bad.toml", &intake, &wrong, "");
    let (code, text) = diagnose(&bad, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL metrics.agent.ddog-gov.com  (metrics) at 127.0.0.1:"), "{text}");
    assert!(text.contains("0 of 16 upstream hosts passed"), "{text}");
    // One root cause, said once, with its fix.
    assert_eq!(text.matches("invalid peer certificate: UnknownIssuer").count(), 1, "{text}");
    assert_eq!(text.matches(": cause 1\n").count(), 16, "{text}");
    assert!(
        text.contains("cause 1: TLS with HOST failed: TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("hosts:       16 (the FAIL lines marked cause 1)"), "{text}");
    assert!(
        text.contains("fix:         the certificate is not signed by a CA the relay trusts (upstream.ca_file "),
        "{text}"
    );
    assert!(
        text.contains("exempt *.ddog-gov.com from TLS inspection") && text.contains("DigiCert Global Root G2"),
        "{text}"
    );
    assert!(!text.contains("cause 2"), "{text}");
}

/// Names that do not resolve get the resolver's fix, once for all of them;
/// the host that resolves passes.
#[test]
fn diagnose_groups_dns_failures_under_one_cause() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let zone = dir.path().join("zone.txt");
    std::fs::write(&zone, "metrics.agent.ddog-gov.com A 127.0.0.1 60\n").unwrap();
    let dns = loadgen::dns::MockDns::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let config = dir.path().join("dns.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nport_range_start = {}\n[upstream]\nport = {}\nca_file = \"{}\"\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n",
            free_range(),
            intake.addr().port(),
            intake.ca_file.display(),
            dns.local_addr()
        ),
    )
    .unwrap();
    let (code, text) = diagnose(&config, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("PASS metrics.agent.ddog-gov.com"), "{text}");
    assert!(text.contains("FAIL api.ddog-gov.com  (metrics (validate)): cause 1"), "{text}");
    assert!(text.contains("cause 1: DNS (dns.nameservers): "), "{text}");
    assert!(text.contains("hosts:       15 (the FAIL lines marked cause 1)"), "{text}");
    assert!(text.contains("fix:         this host cannot resolve the intake's names: check the resolver"), "{text}");
    assert!(!text.contains("cause 2"), "{text}");
    assert!(text.contains("1 of 16 upstream hosts passed"), "{text}");
}

/// With `upstream.protocol = "http1"` diagnose speaks HTTP/1.1, as the relay would.
#[test]
fn diagnose_speaks_the_configured_protocol() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let config = diagnose_config(dir.path(), "h1.toml", &intake, &intake.ca_file, "protocol = \"http1\"\n");
    let (code, text) = diagnose(&config, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("# protocol: upstream.protocol = http1"), "{text}");
    assert!(text.contains("protocol:    http/1.1 (upstream.protocol = \"http1\")"), "{text}");
    assert!(text.contains("HEAD / 202 (over HTTP/1.1)") && !text.contains("over HTTP/2"), "{text}");
}

/// The listen ports: a running fipsrelay passes; ports held by another
/// program fail, named with their holder.
#[test]
fn diagnose_checks_the_running_relays_listeners() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, "");
    let config = relay.log_path.with_extension("toml");
    let (code, text) = diagnose(&config, &[]);
    assert_eq!(code, Some(0), "{text}");
    let range = format!("127.0.0.1:{}-{}", relay.port(0), relay.port(15));
    assert!(
        text.contains(&format!(
            "PASS relay: fipsrelay {} answers on {range} (ready); every port is bound",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    drop(relay);

    // Something else on the status and metrics ports (as the FIPS Proxy would be).
    let base = free_range();
    let squatters: Vec<std::net::TcpListener> =
        [0, 1].iter().map(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).unwrap()).collect();
    let config = diagnose_config_at(dir.path(), "squat.toml", &intake, &intake.ca_file, base, "");
    let (code, text) = diagnose(&config, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("FAIL relay: port {base} does not answer as fipsrelay")), "{text}");
    assert!(text.contains(&format!("ports in use by another program: {base} (status, held by ")), "{text}");
    assert!(text.contains(&format!("{} (metrics, held by ", base + 1)), "{text}");
    assert!(text.contains("systemctl disable --now datadog-fips-proxy"), "{text}");
    drop(squatters);
}

/// The Agent's datadog.yaml: sample files that match the relay's listen
/// settings pass; each mismatch fails with its fix.
#[test]
fn diagnose_checks_the_agents_port_settings() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let base = free_range();
    let config = diagnose_config_at(dir.path(), "agent.toml", &intake, &intake.ca_file, base, "");
    let good = dir.path().join("datadog.yaml");
    std::fs::write(
        &good,
        format!("api_key: {FAKE_KEY}\nsite: ddog-gov.com\nfips:\n  enabled: true\n  port_range_start: {base}\n  https: false\n  local_address: 127.0.0.1\n"),
    )
    .unwrap();
    let (code, text) = diagnose(&config, &["--agent-config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "PASS agent: {}: fips.enabled true, fips.https false, fips.port_range_start {base}",
            good.display()
        )),
        "{text}"
    );
    assert!(!text.contains(FAKE_KEY), "{text}");

    // As the FIPS Proxy's docs leave it: https defaulting to true, the default port range.
    let stale = dir.path().join("stale.yaml");
    std::fs::write(&stale, "site: ddog-gov.com\nfips:\n  enabled: true\n  local_address: localhost\n").unwrap();
    let (code, text) = diagnose(&config, &["--agent-config", stale.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL agent: fips.https is not set (the Agent's default is true)")
            && text.contains("set fips.https: false"),
        "{text}"
    );
    assert!(text.contains(&format!("FAIL agent: fips.port_range_start is 9803 (the Agent's default), the relay's listen.port_range_start is {base}")), "{text}");
    assert!(!text.contains("fips.local_address is"), "localhost is loopback: {text}");

    let missing = dir.path().join("nope.yaml");
    let (code, text) = diagnose(&config, &["--agent-config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL agent: cannot read"), "{text}");
}

/// `FIPSRELAY_CONFIG` names the config when `--config` is not given: `run`
/// starts on it (its port range), and `probe` (an exec probe inherits the
/// container's environment) finds the same status port; `--config` wins
/// over it.
#[test]
fn fipsrelay_config_names_the_config_without_config_flag() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let base = free_range();
    let config = dir.path().join("elsewhere.toml");
    std::fs::write(&config, render_config(base, "epoll", intake.addr(), &intake.ca_file, "")).unwrap();
    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let mut child = std::process::Command::new(relay_bin())
        .arg("run")
        .env("FIPSRELAY_CONFIG", &config)
        .env_remove("DD_FIPS_PORT_RANGE_START")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = std::net::SocketAddr::from(([127, 0, 0, 1], base));
    let ready = eventually(std::time::Duration::from_secs(20), || {
        listens_on(child.id() as i32, base) && health_status(status) == Some(200)
    });
    let probe = |extra: &[&str]| {
        std::process::Command::new(relay_bin())
            .arg("probe")
            .args(extra)
            .env("FIPSRELAY_CONFIG", &config)
            .env_remove("DD_FIPS_PORT_RANGE_START")
            .output()
            .unwrap()
    };
    let found = probe(&[]);
    // --config beats the variable: the defaults file names port 9803's range
    // (a file with another range stands in for it here).
    let other = dir.path().join("other.toml");
    let other_base = if base == 20000 { 20016 } else { base - 16 };
    std::fs::write(&other, format!("[listen]\nport_range_start = {other_base}\n[admin]\nenabled = false\n")).unwrap();
    let overridden = probe(&["--timeout", "1", "--config", other.to_str().unwrap()]);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(ready, "the relay did not start on FIPSRELAY_CONFIG's range {base}:\n{log}");
    assert!(log.contains(&config.display().to_string()), "the start line names the file:\n{log}");
    assert!(
        found.status.success(),
        "probe: {}{}",
        String::from_utf8_lossy(&found.stdout),
        String::from_utf8_lossy(&found.stderr)
    );
    assert!(String::from_utf8_lossy(&found.stdout).contains(&format!(":{base}/health")), "{found:?}");
    assert!(!overridden.status.success(), "--config must win over FIPSRELAY_CONFIG: {overridden:?}");
    assert!(String::from_utf8_lossy(&overridden.stderr).contains(&other_base.to_string()), "{overridden:?}");
}
