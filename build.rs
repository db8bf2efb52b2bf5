//! Build script: records the commit the binary is built from, for
//! `fipsrelay version`, the status page and `/health`, as the environment
//! variable `FIPSRELAY_COMMIT` seen by `env!`.
//!
//! The commit is, in order: `FIPSRELAY_BUILD_COMMIT` when set (a build from a
//! source tarball that knows its commit), else `git rev-parse --short HEAD`
//! with `-dirty` when tracked files differ from it, else `unknown` (no git,
//! or not a checkout). It never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FIPSRELAY_BUILD_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    if let Some(commit) = std::env::var("FIPSRELAY_BUILD_COMMIT").ok().filter(|c| !c.trim().is_empty()) {
        println!("cargo:rustc-env=FIPSRELAY_COMMIT={}", commit.trim());
        return;
    }
    // Rebuilt when HEAD moves (a checkout: HEAD; a commit: the branch's ref,
    // loose or packed) and when a source file changes (`-dirty`). Only files
    // that exist (cargo reruns a script on every build for a missing one);
    // not the index (`git status` rewrites it), nor other branches' refs. A
    // worktree has its own HEAD and shares refs with the main checkout.
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(d) = git(&dir, &["rev-parse", "--git-dir"]) {
        watched.push(dir.join(d).join("HEAD"));
    }
    if let Some(common) = git(&dir, &["rev-parse", "--git-common-dir"]).map(|c| dir.join(c)) {
        if let Some(branch) =
            git(&dir, &["rev-parse", "--symbolic-full-name", "HEAD"]).filter(|b| b.starts_with("refs/"))
        {
            watched.push(common.join(branch));
        }
        watched.push(common.join("packed-refs"));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for watched in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let commit = match git(&dir, &["rev-parse", "--short=10", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            // Tracked files only: an untracked scratch file does not make a build dirty.
            let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=FIPSRELAY_COMMIT={commit}");
}
