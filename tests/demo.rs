//! `fipsrelay demo` runs end to end at its default length (10 s, the README's
//! first command) and its verification matches.
//! Needs the workspace binaries (mock-intake, loadgen) built beside fipsrelay:
//! `cargo build --workspace` (scripts/test.sh does it).

use std::path::Path;
use std::process::Command;

#[test]
fn demo_runs_and_verifies() {
    let relay = Path::new(env!("CARGO_BIN_EXE_fipsrelay"));
    let dir = relay.parent().unwrap();
    for b in ["mock-intake", "loadgen"] {
        assert!(
            dir.join(b).is_file(),
            "{b} missing beside fipsrelay: run `cargo build --workspace` first (scripts/test.sh does)"
        );
    }
    // No options: exactly what ./scripts/demo.sh runs.
    let out = Command::new(relay).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verification: MATCH"), "{stdout}");
    assert!(stdout.contains("µs CPU per request"), "{stdout}");
    assert!(stdout.contains("fips=\"AWS-LC FIPS"), "{stdout}");
}

#[test]
fn demo_names_a_missing_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_fipsrelay"))
        .args(["demo", "--seconds", "1", "--loadgen", "/nonexistent/loadgen"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loadgen not found at /nonexistent/loadgen"), "{err}");
}
