//! The binaries that the packages and the image ship (scripts/build-static.sh,
//! docs/install.md "Platforms"): one per architecture, statically linked
//! against musl, so that they need no libc on the host (RHEL 7's glibc 2.17
//! and older included).
//!
//! - amd64: the ELF file has no program interpreter, no needed library and
//!   no versioned glibc symbol (readelf), and holds the pinned FIPS module
//!   and no other AWS-LC; run natively, `version` reports
//!   the validated module with `fips: enabled` (the module's integrity check
//!   and self-tests ran at start), also in a root filesystem that holds
//!   nothing but the binary (chroot, as root); and requests of several sizes
//!   reach the mock intake byte for byte on epoll and on io_uring. The binary:
//!   `FIPSRELAY_STATIC_AMD64` (scripts/release.sh sets it to its release
//!   build), else this test builds one (`scripts/build-static.sh --arch
//!   amd64 --profile dev`: musl-tools and the Rust target, which
//!   scripts/setup.sh installs). This runs in every `./scripts/test.sh`.
//! - arm64: the same checks with the aarch64 binary run by
//!   `qemu-aarch64-static` (qemu-user), the mock intake and the clients
//!   native; on epoll, and io_uring probed (qemu-user has no io_uring
//!   syscalls: the relay must refuse `io = "uring"` with its reason and
//!   start on epoll with `auto`). The binary: `FIPSRELAY_STATIC_ARM64`
//!   (scripts/release.sh), else the release build of `scripts/build-static.sh
//!   --arch arm64` when it is there. Without qemu or without the binary the
//!   test says SKIPPED and why: the arm64 cross build takes too long for the
//!   test command, so scripts/release.sh is where it always runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LOGS: &str = "/api/v2/logs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readelf(args: &[&str], binary: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(binary)
        .output()
        .expect("readelf (binutils; scripts/setup.sh installs build-essential)");
    assert!(out.status.success(), "readelf {args:?} {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts what makes the binary run on any Linux of its architecture: an
/// ELF executable for `machine`, with no program interpreter (the dynamic
/// loader), no needed shared library and no versioned glibc symbol.
fn assert_static(binary: &Path, machine: &str) {
    let header = readelf(&["-hW"], binary);
    let found = header.lines().find(|l| l.trim_start().starts_with("Machine:")).unwrap_or_default();
    assert!(found.contains(machine), "{} is not {machine}: {found}", binary.display());
    let segments = readelf(&["-lW"], binary);
    assert!(
        !segments.contains("Requesting program interpreter") && !segments.contains("INTERP"),
        "{} has a program interpreter (dynamically linked):\n{segments}",
        binary.display()
    );
    let dynamic = readelf(&["-dW"], binary);
    assert!(!dynamic.contains("(NEEDED)"), "{} needs shared libraries:\n{dynamic}", binary.display());
    let versions = readelf(&["-VW"], binary);
    assert!(!versions.contains("GLIBC_"), "{} references versioned glibc symbols:\n{versions}", binary.display());
}

/// As `tests/relay_cli.rs` checks the development build: the pinned FIPS
/// module's symbols are in, the non-FIPS AWS-LC that rustls' `aws_lc_rs`
/// feature also compiles is not.
fn assert_only_the_fips_module(binary: &Path) {
    let bytes = std::fs::read(binary).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"aws_lc_fips_0_13_11_"), "{}: the pinned FIPS module's symbols are missing", binary.display());
    assert!(!has(b"aws_lc_0_"), "{}: links a non-FIPS AWS-LC (aws_lc_0_* symbols)", binary.display());
}

/// The binary that `var` names, if it names one.
fn env_binary(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    Some(path)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Runs `prefix... binary args...` (prefix: the emulator, if any).
fn command(prefix: &[&str], binary: &Path) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// `fipsrelay version` reports the validated module with `fips: enabled`:
/// the module checked its own integrity and ran its self-tests to get there.
fn assert_version(prefix: &[&str], binary: &Path) -> String {
    let out = command(prefix, binary).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "version failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("fips: enabled (AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated)"),
        "{text}"
    );
    assert!(text.lines().next().unwrap_or_default() == format!("fipsrelay {}", env!("CARGO_PKG_VERSION")), "{text}");
    text
}

/// A relay process under test, killed when dropped.
struct Running {
    child: Child,
    base: u16,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `prefix... binary run` on a free port range with `io`, pointed at
/// the intake; Err(log) when it exits before it is ready (within `timeout`:
/// emulated, the start and the FIPS self-tests take seconds).
fn start(
    prefix: &[&str],
    binary: &Path,
    dir: &Path,
    intake: &Intake,
    io: &str,
    timeout: Duration,
) -> Result<Running, String> {
    let base = free_range();
    let config = dir.join(format!("relay-{io}.toml"));
    std::fs::write(&config, render_config(base, io, intake.addr(), &intake.ca_file, "")).unwrap();
    let log = dir.join(format!("relay-{io}.log"));
    let child = command(prefix, binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running { child, base, log };
    let status = std::net::SocketAddr::from(([127, 0, 0, 1], base));
    let deadline = Instant::now() + timeout;
    loop {
        if running.child.try_wait().unwrap().is_some() {
            return Err(running.log());
        }
        if listens_on(running.child.id() as i32, base) && health_status(status) == Some(200) {
            return Ok(running);
        }
        assert!(Instant::now() < deadline, "{io}: not ready after {timeout:?}:\n{}", running.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bodies of several sizes, Content-Length and chunked, on one connection
/// to the logs port, then the mock intake's records: every body there once,
/// byte for byte (length and hash), in order.
fn assert_relays(relay: &Running, intake: &Intake) {
    let before = intake.mock.records().len();
    let mut client = Client::connect(std::net::SocketAddr::from(([127, 0, 0, 1], relay.base + 5)));
    let mut expected = Vec::new();
    for (i, size) in [0usize, 1, 1000, 16 * 1024 + 1, 300_000].into_iter().enumerate() {
        let body = payload(size, 7000 + i as u64);
        let r = client.request("POST", LOGS, &[("DD-API-KEY", FAKE_KEY)], &body);
        assert_eq!(r.status, 202, "content-length {size}:\n{}", relay.log());
        let chunked = encode_chunked(&body, 1 + size / 3);
        let r = client.request("POST", LOGS, &[("DD-API-KEY", FAKE_KEY), ("Transfer-Encoding", "chunked")], &chunked);
        assert_eq!(r.status, 202, "chunked {size}:\n{}", relay.log());
        expected.extend([(size as u64, body_hash(&body)); 2]);
    }
    let got: Vec<(u64, u64)> = intake.mock.records()[before..].iter().map(|r| (r.body_len, r.body_hash)).collect();
    assert_eq!(got, expected);
}

/// The start line's `io="..."`.
fn io_of(log: &str) -> String {
    let line = log.lines().find(|l| l.contains("fipsrelay starting")).unwrap_or_default();
    line.split("io=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or_default().to_string()
}

#[test]
fn amd64_binary_is_static_and_relays() {
    let binary = env_binary("FIPSRELAY_STATIC_AMD64").unwrap_or_else(|| {
        let started = Instant::now();
        let out = Command::new(root().join("scripts/build-static.sh"))
            .args(["--arch", "amd64", "--profile", "dev"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/build-static.sh --arch amd64 --profile dev failed (scripts/setup.sh installs musl-tools and the target):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        eprintln!("built {path} in {:.0?}", started.elapsed());
        PathBuf::from(path)
    });
    eprintln!("checking {}", binary.display());
    assert_static(&binary, "X86-64");
    assert_only_the_fips_module(&binary);
    assert_version(&[], &binary);
    let dir = TestDir::new();
    // Nothing from the distribution: in a root filesystem that holds the
    // binary alone (no libc, no loader, no /etc, no /proc), the module
    // still checks itself and `version` reports it validated.
    if unsafe { libc::geteuid() } == 0 {
        let empty = dir.path().join("empty-root");
        std::fs::create_dir(&empty).unwrap();
        std::fs::copy(&binary, empty.join("fipsrelay")).unwrap();
        let out = Command::new("chroot").arg(&empty).args(["/fipsrelay", "version"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("fips: enabled (AWS-LC FIPS 3.1.0 static"),
            "in an empty root: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&empty).unwrap();
    } else {
        eprintln!("note: not root, so `version` in an empty root (chroot) was not run");
    }
    let intake = Intake::start(dir.path());
    for io in ["epoll", "uring"] {
        if io == "uring" && skip_uring() {
            continue;
        }
        let relay = start(&[], &binary, dir.path(), &intake, io, Duration::from_secs(20))
            .unwrap_or_else(|log| panic!("{io}: the relay exited:\n{log}"));
        let started_on = if io == "uring" { "io_uring" } else { io };
        assert_eq!(io_of(&relay.log()), started_on, "{}", relay.log());
        assert_relays(&relay, &intake);
    }
}

#[test]
fn arm64_binary_under_qemu_reports_the_module_and_relays() {
    let default = target_dir().join("aarch64-unknown-linux-musl/release/fipsrelay");
    let Some(binary) = env_binary("FIPSRELAY_STATIC_ARM64").or_else(|| default.is_file().then_some(default)) else {
        eprintln!(
            "SKIPPED: no arm64 binary: set FIPSRELAY_STATIC_ARM64=PATH, or build it (scripts/build-static.sh --arch arm64, which scripts/release.sh runs)"
        );
        return;
    };
    if Command::new("qemu-aarch64-static").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: qemu-aarch64-static is not installed (scripts/setup.sh --release installs qemu-user-static)"
        );
        return;
    }
    eprintln!("checking {} under qemu-aarch64-static", binary.display());
    assert_static(&binary, "AArch64");
    assert_only_the_fips_module(&binary);
    let qemu = ["qemu-aarch64-static"];
    let version = assert_version(&qemu, &binary);
    eprintln!("{}", version.trim());
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = start(&qemu, &binary, dir.path(), &intake, "epoll", Duration::from_secs(90))
        .unwrap_or_else(|log| panic!("epoll under qemu: the relay exited:\n{log}"));
    assert_eq!(io_of(&relay.log()), "epoll", "{}", relay.log());
    assert_relays(&relay, &intake);
    drop(relay);

    // io_uring under qemu-user: probed. Where the emulator has no io_uring
    // syscalls, `io = "uring"` must be refused with its reason and `auto`
    // must start on epoll; where it has them, io_uring must relay too.
    match start(&qemu, &binary, dir.path(), &intake, "uring", Duration::from_secs(90)) {
        Ok(relay) => {
            eprintln!("PROBE: io_uring works under qemu-user here");
            assert_relays(&relay, &intake);
        }
        Err(log) => {
            let reason = log.lines().rev().find(|l| l.contains("io_uring")).unwrap_or_default();
            eprintln!("PROBE: io_uring does not work under qemu-user: {reason}");
            assert!(!reason.is_empty(), "the refusal names io_uring:\n{log}");
            let relay = start(&qemu, &binary, dir.path(), &intake, "auto", Duration::from_secs(90))
                .unwrap_or_else(|log| panic!("auto under qemu: the relay exited:\n{log}"));
            assert_eq!(io_of(&relay.log()), "epoll", "{}", relay.log());
            assert_relays(&relay, &intake);
        }
    }
}
