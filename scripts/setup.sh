#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian 12 machine with rustup:
# cmake and Go build the AWS-LC FIPS module (aws-lc-fips-sys), a C compiler
# and clang's libraries for bindgen; ApacheBench (ab, apache2-utils) for the
# HTTP/1.0 keep-alive test in tests/relay_http10.rs and htpasswd; Squid, the real
# egress proxy of tests/proxy.rs; podman, buildah and runc for the container
# image and its test (tests/image.rs); rpm (rpmbuild) and systemd-analyze for
# the packages (tests/packages.rs). Idempotent; asks apt only when missing.
set -euo pipefail
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
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }
