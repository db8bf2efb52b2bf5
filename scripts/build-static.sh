#!/usr/bin/env bash
# Builds the fipsrelay binary that the packages and the image ship, for one
# architecture: statically linked against musl (Rust's *-unknown-linux-musl
# targets), mimalloc as the allocator as in every build, the AWS-LC FIPS
# module inside. It needs no libc, loader or library on the host, so one
# binary per architecture runs on every distribution docs/install.md lists
# (RHEL 7 and later included). The C of the build (the FIPS module, mimalloc)
# is compiled by gcc: musl-tools' musl-gcc for amd64, Debian's aarch64 cross
# gcc with musl-dev:arm64 (scripts/cross/aarch64-linux-musl-gcc) for arm64.
# `scripts/setup.sh --release` installs both.
#
#   scripts/build-static.sh --arch amd64|arm64 [--profile release|dev]
#
# Prints the binary's path as its last line of stdout (cargo's output goes to
# stderr). The FIPS module's build takes several minutes per architecture;
# cargo rebuilds nothing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=""
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    *) echo "build-static.sh: unknown argument $1 (use --arch amd64|arm64, --profile release|dev)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  amd64)
    triple=x86_64-unknown-linux-musl
    # The cc crate picks musl-gcc for this target by itself, and the linker
    # is the host's cc (rustc brings musl's start files and libc.a).
    command -v musl-gcc >/dev/null 2>&1 || { echo "build-static.sh: musl-gcc not found: scripts/setup.sh --release (apt-get install musl-tools)" >&2; exit 1; }
    kernel_headers=(/usr/include/linux /usr/include/asm-generic /usr/include/x86_64-linux-gnu/asm)
    ;;
  arm64)
    triple=aarch64-unknown-linux-musl
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || { echo "build-static.sh: aarch64-linux-gnu-gcc not found: scripts/setup.sh --release (apt-get install gcc-aarch64-linux-gnu)" >&2; exit 1; }
    [ -r /usr/lib/aarch64-linux-musl/musl-gcc.specs ] || { echo "build-static.sh: musl for arm64 not found: scripts/setup.sh --release (dpkg --add-architecture arm64; apt-get install musl-dev:arm64)" >&2; exit 1; }
    export CC_aarch64_unknown_linux_musl="$PWD/scripts/cross/aarch64-linux-musl-gcc"
    export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
    kernel_headers=(/usr/aarch64-linux-gnu/include/linux /usr/aarch64-linux-gnu/include/asm-generic /usr/aarch64-linux-gnu/include/asm)
    ;;
  "") echo "build-static.sh: --arch is required (amd64 or arm64)" >&2; exit 2 ;;
  *) echo "build-static.sh: --arch $arch is not built (use amd64 or arm64)" >&2; exit 2 ;;
esac
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "build-static.sh: --profile $profile is not built (use release or dev)" >&2; exit 2 ;;
esac
# musl's headers leave out the kernel's (linux/, asm/), which the FIPS
# module includes (linux/random.h): the kernel headers of the target's
# Debian packages, alone in a directory of their own (glibc's headers beside
# them must stay out).
headers="${CARGO_TARGET_DIR:-$PWD/target}/kernel-headers/$arch"
mkdir -p "$headers"
for include in "${kernel_headers[@]}"; do
  [ -d "$include" ] || { echo "build-static.sh: kernel headers $include not found: scripts/setup.sh --release" >&2; exit 1; }
  ln -sfn "$include" "$headers/$(basename "$include")"
done
export "CFLAGS_${triple//-/_}=-isystem $headers"
rustup target list --installed 2>/dev/null | grep -qx "$triple" || rustup target add "$triple" >&2
cargo build --locked --profile "$profile" --target "$triple" --bin fipsrelay >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$triple/$dir/fipsrelay"
