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
        .env("DD_SITE", "example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# 10001  metrics"), "{text}");
    assert!(text.contains("metrics.agent.example.com"), "{text}");
    assert!(text.contains("# 10015  network_devices_netflow      ndmflow-intake.example.com"), "{text}");
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

#[test]
fn diagnose_checks_every_upstream_and_names_failures() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[upstream]\noverride_addr = \"{}\"\nca_file = \"{}\"\n", intake.addr(), intake.ca_file.display()),
    )
    .unwrap();
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
    assert!(!text.contains(FAKE_KEY), "the API key must not be printed");
    let validated = intake.mock.records().into_iter().filter(|r| r.path == "/api/v1/validate").collect::<Vec<_>>();
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0].header("dd-api-key"), Some(FAKE_KEY));
    assert_eq!(validated[0].sni.as_deref(), Some("api.ddog-gov.com"));

    let other = TestPki::generate(&[]);
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, &other.ca_cert_pem).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[upstream]\noverride_addr = \"{}\"\nca_file = \"{}\"\n", intake.addr(), wrong.display()),
    )
    .unwrap();
    let out = std::process::Command::new(relay_bin()).args(["diagnose", "--config"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL metrics.agent.ddog-gov.com") && text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("0 of 16 upstream hosts passed"), "{text}");
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
