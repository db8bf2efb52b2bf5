#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian 12 machine with rustup:
# cmake and Go build the AWS-LC FIPS module (aws-lc-fips-sys), a C compiler
# and clang's libraries for bindgen; ApacheBench (ab, apache2-utils) for the
# HTTP/1.0 keep-alive test in tests/relay_http10.rs and htpasswd; Squid, the real
# egress proxy of tests/proxy.rs; podman, buildah and runc for the container
# image and its test (tests/image.rs); rpm (rpmbuild) and systemd-analyze for
# the packages (tests/packages.rs); python3 and its venv module, then
# Datadog's check library (datadog-checks-base, from PyPI) in a venv for
# tests/agent_check.rs; musl-tools and Rust's x86_64-unknown-linux-musl
# target for the static amd64 build that tests/platforms.rs checks.
# Idempotent; asks apt, pip and rustup only when missing.
#
# --release (scripts/release.sh) adds what the arm64 build and its checks
# need: gcc-aarch64-linux-gnu and musl-dev:arm64 (which needs the arm64
# architecture added to dpkg), qemu-user-static (runs the arm64 binary in
# tests/platforms.rs), cpio (unpacks the rpms) and Rust's
# aarch64-unknown-linux-musl target.
set -euo pipefail
release=0
case "${1:-}" in
  --release) release=1 ;;
  "") ;;
  *) echo "setup: unknown argument $1 (use --release)" >&2; exit 2 ;;
esac
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# openssl s_server: the TLS interop test in tests/tls_unbuffered.rs.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ab >/dev/null 2>&1 || need+=(apache2-utils)
[ -x /usr/sbin/squid ] && [ -x /usr/lib/squid/basic_ncsa_auth ] || need+=(squid)
# nginx as a TLS 1.2 / 1.3 intake for the interop test (tests/nginx.rs).
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v runc >/dev/null 2>&1 || need+=(runc)
# rpmbuild and rpm for the rpm package and its test; systemd-analyze for the deb test.
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# python3 -m venv: Debian splits ensurepip into python3-venv.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# musl-gcc: tests/platforms.rs builds the static amd64 binary that the
# packages ship (scripts/build-static.sh) and checks it.
command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
if [ "$release" = 1 ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
  command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
  # cpio unpacks the rpms (rpm2cpio) to compare their binary with the checked one.
  command -v cpio >/dev/null 2>&1 || need+=(cpio)
  if [ ! -r /usr/lib/aarch64-linux-musl/musl-gcc.specs ]; then
    dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
    need+=(musl-dev:arm64)
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }

# Datadog's openmetrics check (datadog-checks-base) for tests/agent_check.rs,
# in a venv shared by every checkout of this user (about 30 s the first time,
# 54 MB). Only the library's imports that the check runs are installed: its
# `deps` extra pins versions PyPI may no longer serve. Without network the
# test skips and says so.
venv="${FIPSRELAY_AGENT_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fipsrelay/agent-check-venv}"
if ! "$venv/bin/python" -c 'import datadog_checks.base.checks.openmetrics.v2, yaml, requests_unixsocket' >/dev/null 2>&1; then
  echo "setup: installing datadog-checks-base into $venv" >&2
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
    datadog-checks-base==38.7.0 lazy-loader pyyaml requests requests-unixsocket2 binary prometheus-client \
    python-dateutil wrapt pydantic; }; then
    echo "setup: could not install datadog-checks-base (no network to PyPI?); tests/agent_check.rs will skip" >&2
  fi
fi
triples=(x86_64-unknown-linux-musl)
[ "$release" = 1 ] && triples+=(aarch64-unknown-linux-musl)
for triple in "${triples[@]}"; do
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
done
