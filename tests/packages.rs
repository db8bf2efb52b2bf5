//! The deb and rpm packages: `scripts/package.sh` builds them (with this
//! build's binary), then their metadata and file lists are checked with
//! dpkg-deb and rpm, and, where the test runs as root on a dpkg system (the
//! disposable test machine), the deb is installed, upgraded, removed and
//! purged for real: `fipsrelay version` from /usr/bin, `systemd-analyze
//! verify` of the installed unit, the admin token, the operator's config
//! kept across the upgrade and the removal.

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
    "/usr/share/fipsrelay/tuning/throughput.conf",
    "/usr/share/fipsrelay/tuning/latency.conf",
    "/usr/share/fipsrelay/tuning/many-connections.conf",
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
    let requires = ok(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(requires.contains("libc.so.6(GLIBC_2.34)(64bit)"), "the glibc the deb's Depends names:\n{requires}");
    assert!(!requires.contains("GLIBC_2.35"), "a newer glibc than the deb's Depends names:\n{requires}");

    // An arm64 package of an x86_64 binary is refused, naming the fix.
    let wrong = run(Command::new(format!("{}/scripts/package.sh", env!("CARGO_MANIFEST_DIR")))
        .args(["--arch", "arm64", "--fast", "--binary", relay_bin(), "--out"])
        .arg(dir.path().join("wrong")));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("is not an aarch64 executable") && err.contains("--arch arm64"), "{err}");
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", "fipsrelay"]));
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

    ok(Command::new("dpkg").arg("-i").arg(&deb));
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
