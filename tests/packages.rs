//! The deb and rpm packages: `scripts/package.sh` builds them (with this
//! build's binary), then their metadata and file lists are checked with
//! dpkg-deb and rpm, and, where the test runs as root on a dpkg system (the
//! disposable test machine), the deb is installed, upgraded, removed and
//! purged for real: `fipsrelay version` from /usr/bin, `systemd-analyze
//! verify` of the installed unit, the admin token, the operator's config
//! kept across the upgrade and the removal, and what the install says when
//! the Datadog Agent FIPS Proxy's unit is enabled (a stand-in unit).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build(out: &Path, version: Option<&str>) -> (PathBuf, PathBuf) {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(format!("{root}/scripts/package.sh"));
    cmd.args(["--binary", relay_bin(), "--fast", "--out"]).arg(out);
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    ok(&mut cmd);
    let v = version.unwrap_or(VERSION);
    (out.join(format!("fipsrelay_{v}-1_amd64.deb")), out.join(format!("fipsrelay-{v}-1.x86_64.rpm")))
}

/// What both packages must install.
const FILES: &[&str] = &[
    "/usr/bin/fipsrelay",
    "/usr/lib/sysusers.d/fipsrelay.conf",
    "/etc/fipsrelay/fipsrelay.toml",
    "/usr/share/fipsrelay/create-admin-token",
    "/usr/share/fipsrelay/datadog-fips-proxy-check",
    "/usr/share/fipsrelay/tuning/throughput.conf",
    "/usr/share/fipsrelay/tuning/latency.conf",
    "/usr/share/fipsrelay/tuning/many-connections.conf",
    "/usr/share/fipsrelay/datadog-agent/fipsrelay.d/conf.yaml",
];

#[test]
fn deb_and_rpm_hold_the_files_metadata_and_scripts() {
    for tool in ["dpkg-deb", "rpmbuild", "rpm"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: scripts/setup.sh installs it (apt-get install dpkg rpm)"
        );
    }
    let dir = TestDir::new();
    let (deb, rpm) = build(dir.path(), None);

    // deb: control fields, files (./path), conffiles, maintainer scripts.
    let field = |f: &str| ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f)).trim().to_string();
    assert_eq!(field("Package"), "fipsrelay");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), "amd64");
    // The binary under test is a development build, linked against this
    // machine's glibc: the deb depends on the newest GLIBC_x.y it references
    // (Debian 12: 2.34), as the rpm's automatic requirements say. The
    // release's static binaries depend on none (scripts/release.sh checks).
    assert_eq!(field("Depends"), "libc6 (>= 2.34)");
    assert_eq!(field("Description").lines().next().unwrap(), env!("CARGO_PKG_DESCRIPTION"));
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in FILES.iter().chain(&["/lib/systemd/system/fipsrelay.service"]) {
        assert!(listing.lines().any(|l| l.ends_with(&format!(".{f}"))), "{f} missing from the deb:\n{listing}");
    }
    assert!(
        listing.lines().any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/fipsrelay")),
        "{listing}"
    );
    let control = dir.path().join("control");
    ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/fipsrelay/fipsrelay.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemctl daemon-reload") && postinst.contains("systemctl enable fipsrelay.service"));
    assert!(!postinst.contains("systemctl start"), "install enables, never starts");
    assert!(
        postinst.contains("/usr/bin/fipsrelay reload --config /etc/fipsrelay/fipsrelay.toml"),
        "upgrade restarts in place"
    );
    assert!(!postinst.contains("reload fipsrelay.service || true"), "a refused reload must not be silent");
    assert!(
        postinst.contains("/usr/share/fipsrelay/datadog-fips-proxy-check || fips_proxy=1")
            && postinst.contains(r#"[ "$fips_proxy" = 1 ] || systemctl enable fipsrelay.service"#),
        "install checks for the FIPS Proxy and enables nothing while it is there:\n{postinst}"
    );
    for verb in ["stop", "disable", "mask"] {
        assert!(
            !postinst.contains(&format!("{verb} datadog-fips-proxy")),
            "the package must not {verb} the FIPS Proxy"
        );
    }

    // rpm: header, files, config files, scriptlets, requirements.
    let info = ok(Command::new("rpm").arg("-qpi").arg(&rpm));
    for want in [
        "Name        : fipsrelay".to_string(),
        format!("Version     : {VERSION}"),
        "License     : Apache-2.0".to_string(),
        format!("Summary     : {}", env!("CARGO_PKG_DESCRIPTION")),
        "Architecture: x86_64".to_string(),
    ] {
        assert!(info.contains(&want), "{want:?} not in:\n{info}");
    }
    let files = ok(Command::new("rpm").arg("-qpl").arg(&rpm));
    for f in FILES.iter().chain(&["/usr/lib/systemd/system/fipsrelay.service"]) {
        assert!(files.lines().any(|l| l == *f), "{f} missing from the rpm:\n{files}");
    }
    assert_eq!(ok(Command::new("rpm").arg("-qpc").arg(&rpm)).trim(), "/etc/fipsrelay/fipsrelay.toml");
    let scripts = ok(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(
        scripts.contains("systemctl enable fipsrelay.service")
            && scripts.contains("/usr/bin/fipsrelay reload --config /etc/fipsrelay/fipsrelay.toml"),
        "{scripts}"
    );
    assert!(scripts.contains("create-admin-token") && scripts.contains("systemd-sysusers"), "{scripts}");
    assert!(
        scripts.contains("/usr/share/fipsrelay/datadog-fips-proxy-check || fips_proxy=1")
            && scripts.contains(r#"[ "$fips_proxy" = 1 ] || systemctl enable fipsrelay.service"#),
        "{scripts}"
    );
    let requires = ok(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(requires.contains("libc.so.6(GLIBC_2.34)(64bit)"), "the glibc the deb's Depends names:\n{requires}");
    assert!(!requires.contains("GLIBC_2.35"), "a newer glibc than the deb's Depends names:\n{requires}");

    // An arm64 package of an x86_64 binary is refused, naming the fix.
    let wrong = run(Command::new(format!("{}/scripts/package.sh", env!("CARGO_MANIFEST_DIR")))
        .args(["--arch", "arm64", "--fast", "--binary", relay_bin(), "--out"])
        .arg(dir.path().join("wrong")));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("is not an aarch64 executable") && err.contains("--arch arm64"),
        "{err}"
    );
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", "fipsrelay"]));
    }
}

/// A stand-in `datadog-fips-proxy.service` in /etc/systemd/system, enabled
/// on disk; disabled and removed when dropped. None when the host has a
/// unit of that name already (a real FIPS Proxy: not touched).
struct FakeFipsProxy;

impl FakeFipsProxy {
    const UNIT: &'static str = "/etc/systemd/system/datadog-fips-proxy.service";

    fn install() -> Option<FakeFipsProxy> {
        let known = run(Command::new("systemctl").args(["cat", "datadog-fips-proxy.service"]));
        if known.status.success() || Path::new(Self::UNIT).exists() {
            eprintln!("a datadog-fips-proxy unit exists here: the install runs without the stand-in");
            return None;
        }
        std::fs::write(
            Self::UNIT,
            "[Unit]\nDescription=stand-in for the Datadog Agent FIPS Proxy (tests/packages.rs)\n\
             [Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        let fake = FakeFipsProxy;
        ok(Command::new("systemctl").args(["enable", "datadog-fips-proxy.service"]));
        Some(fake)
    }
}

impl Drop for FakeFipsProxy {
    fn drop(&mut self) {
        let _ = run(Command::new("systemctl").args(["disable", "datadog-fips-proxy.service"]));
        let _ = std::fs::remove_file(Self::UNIT);
    }
}

#[test]
fn the_deb_installs_upgrades_keeping_the_config_and_purges() {
    if unsafe { libc::geteuid() } != 0 || Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED: installing the deb needs root on a dpkg system (the disposable test machine)");
        return;
    }
    if run(Command::new("dpkg").args(["-s", "fipsrelay"])).status.success() {
        eprintln!("SKIPPED: a fipsrelay package is already installed here; not touching it");
        return;
    }
    let dir = TestDir::new();
    let (deb, _) = build(dir.path(), None);
    let (newer, _) = build(&dir.path().join("newer"), Some("99.0.0"));
    let _purge = Purge;

    // A Datadog Agent FIPS Proxy enabled on this host (a stand-in unit,
    // enabled on disk: `systemctl is-enabled` reads unit files without a
    // running systemd). The install says what to do and touches it not.
    let fake_proxy = FakeFipsProxy::install();
    let first = run(Command::new("dpkg").arg("-i").arg(&deb));
    let said = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "dpkg -i: {said}");
    if fake_proxy.is_some() {
        assert!(said.contains("(datadog-fips-proxy.service) is enabled on this host"), "{said}");
        assert!(said.contains("did not enable fipsrelay.service"), "{said}");
        assert!(
            run(Command::new("systemctl").args(["is-enabled", "--quiet", "datadog-fips-proxy.service"]))
                .status
                .success(),
            "the package changed the FIPS Proxy's unit"
        );
        assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/fipsrelay.service").exists());
    }
    drop(fake_proxy);
    let version = ok(Command::new("/usr/bin/fipsrelay").arg("version"));
    assert!(
        version.starts_with(&format!("fipsrelay {VERSION}\n")) && version.contains("fips: enabled (AWS-LC FIPS 3.1.0"),
        "{version}"
    );
    ok(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/fipsrelay.service"]));
    let unit = std::fs::read_to_string("/lib/systemd/system/fipsrelay.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/fipsrelay run") && !unit.contains("/usr/local/bin"), "{unit}");
    assert!(unit.contains("ExecReload=/usr/bin/fipsrelay reload --config /etc/fipsrelay/fipsrelay.toml"), "{unit}");
    // The service user and its admin token (0600, owned by it).
    let passwd = ok(Command::new("getent").args(["passwd", "fipsrelay"]));
    let uid: u32 = passwd.split(':').nth(2).unwrap().parse().unwrap();
    use std::os::unix::fs::MetadataExt;
    let token = std::fs::metadata("/etc/fipsrelay/admin.token").unwrap();
    assert_eq!((token.mode() & 0o777, token.uid()), (0o600, uid));
    let token_text = std::fs::read_to_string("/etc/fipsrelay/admin.token").unwrap();
    assert_eq!(token_text.len(), 64);
    // The Agent's check, as shipped, scraping the installed config's status port.
    let agent_conf = "/usr/share/fipsrelay/datadog-agent/fipsrelay.d/conf.yaml";
    assert_eq!(
        std::fs::read_to_string(agent_conf).unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/datadog-agent/fipsrelay.d/conf.yaml"))
            .unwrap()
    );
    assert_eq!(std::fs::metadata(agent_conf).unwrap().mode() & 0o777, 0o644);
    let installed = fipsrelay::config::parse_str(&std::fs::read_to_string("/etc/fipsrelay/fipsrelay.toml").unwrap())
        .unwrap()
        .validate()
        .unwrap();
    let endpoint = format!("http://{}:{}/metrics", installed.listen_address, installed.port_range_start);
    assert!(std::fs::read_to_string(agent_conf).unwrap().contains(&format!("openmetrics_endpoint: {endpoint}\n")));
    // The installed config is one `check-config` accepts.
    ok(Command::new("/usr/bin/fipsrelay").args(["check-config", "--config", "/etc/fipsrelay/fipsrelay.toml"]));

    // The operator edits the config; an upgrade keeps it, and the token.
    let config = "/etc/fipsrelay/fipsrelay.toml";
    let edited = std::fs::read_to_string(config).unwrap() + "\n# edited by the operator\n";
    std::fs::write(config, &edited).unwrap();
    ok(Command::new("dpkg").arg("-i").arg(&newer));
    assert!(ok(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "fipsrelay"])).starts_with("99.0.0"));
    assert_eq!(std::fs::read_to_string(config).unwrap(), edited, "the upgrade replaced the operator's config");
    assert_eq!(std::fs::read_to_string("/etc/fipsrelay/admin.token").unwrap(), token_text);

    // Removal leaves the config; purge deletes it.
    ok(Command::new("dpkg").args(["--remove", "fipsrelay"]));
    assert!(!Path::new("/usr/bin/fipsrelay").exists());
    assert_eq!(std::fs::read_to_string(config).unwrap(), edited, "removal deleted the config");
    ok(Command::new("dpkg").args(["--purge", "fipsrelay"]));
    assert!(!Path::new("/etc/fipsrelay").exists(), "purge left /etc/fipsrelay");
}

/// The unit and the Datadog Agent FIPS Proxy's never run together:
/// `Conflicts=` (starting one stops the other), and an ordering so that
/// systemd finishes the FIPS Proxy's stop (its ports free) before fipsrelay
/// starts: Conflicts= alone orders nothing (systemd.unit(5)).
#[test]
fn the_unit_conflicts_with_the_fips_proxy_and_starts_after_its_stop() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/fipsrelay.service")).unwrap();
    let section: Vec<&str> = unit
        .lines()
        .skip_while(|l| l.trim() != "[Unit]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let values = |key: &str| -> Vec<String> {
        section
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .flat_map(|v| v.split_whitespace().map(String::from))
            .collect()
    };
    assert!(values("Conflicts").contains(&"datadog-fips-proxy.service".to_string()), "{section:?}");
    assert!(values("After").contains(&"datadog-fips-proxy.service".to_string()), "{section:?}");
    assert!(!values("Before").contains(&"datadog-fips-proxy.service".to_string()), "{section:?}");
}

/// `datadog-fips-proxy-check` (run by both packages at install) with a fake
/// `systemctl` first on PATH that reports the FIPS Proxy's state and logs
/// every call: it exits 1 and says what to do when the FIPS Proxy runs or is
/// enabled, stays quiet when it is absent, and never stops, disables or
/// masks anything.
#[test]
fn the_install_check_says_what_to_do_and_touches_nothing() {
    let dir = TestDir::new();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("calls");
    let fake = bin.join("systemctl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in\n  *is-active*) exit \"$ACTIVE\" ;;\n  *is-enabled*) exit \"$ENABLED\" ;;\nesac\nexit 0\n",
            calls.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let check = |active: u8, enabled: u8| {
        let out = run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/datadog-fips-proxy-check"))
            .env("PATH", &path)
            .env("ACTIVE", active.to_string())
            .env("ENABLED", enabled.to_string()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check(3, 1), (Some(0), String::new(), String::new()), "absent: quiet, and install enables fipsrelay");
    let (code, stdout, stderr) = check(0, 0);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(stderr.contains("datadog-fips-proxy.service) is running and enabled"), "{stderr}");
    for want in [
        "did not enable fipsrelay.service",
        "fipsrelay migrate > /tmp/fipsrelay.toml",
        "systemctl disable --now datadog-fips-proxy.service",
        "systemctl enable --now fipsrelay",
        "datadog-agent diagnose",
        "To roll back: systemctl disable --now fipsrelay && systemctl enable --now datadog-fips-proxy.service",
        "/usr/share/doc/fipsrelay/docs/migrating.md",
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
    let (code, _, stderr) = check(3, 0);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("is enabled on this host"), "{stderr}");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(log.lines().all(|l| l.starts_with("is-active") || l.starts_with("is-enabled")), "only asks:\n{log}");
    // The doc the message names is shipped.
    assert!(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/migrating.md")).exists());
}
