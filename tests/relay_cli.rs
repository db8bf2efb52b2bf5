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
