#!/usr/bin/env bash
# Builds the container image fipsrelay:<version> and fipsrelay:latest FROM
# scratch with buildah (or podman), offline: no base image, only this host's
# files. The root filesystem holds the release binary, the shared libraries
# it links (found with ldd), the CA bundle, /etc/fipsrelay/fipsrelay.toml
# and passwd/group entries for uid 10001.
#
#   scripts/image.sh [--binary PATH] [--tag NAME]   (default: a release build, tag fipsrelay)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""
name="fipsrelay"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) name="$2"; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (use --binary PATH, --tag NAME)" >&2; exit 2 ;;
  esac
done
if command -v buildah >/dev/null 2>&1; then
  builder=(buildah build --isolation chroot)
elif command -v podman >/dev/null 2>&1; then
  builder=(podman build)
else
  echo "image.sh: neither buildah nor podman is installed: apt-get install buildah (or podman)" >&2
  exit 1
fi
if [ -z "$binary" ]; then
  cargo build --release --locked --bin fipsrelay
  binary=target/release/fipsrelay
fi
[ -x "$binary" ] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca_bundle" ] || { echo "image.sh: no CA bundle at $ca_bundle: apt-get install ca-certificates" >&2; exit 1; }

mkdir -p target
work=$(mktemp -d target/image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/bin" "$root/etc/fipsrelay" "$root/etc/ssl/certs" "$root/tmp"
install -m 0755 "$binary" "$root/usr/bin/fipsrelay"
# The dynamic loader and every library the binary links, at the same paths.
ldd "$binary" | awk '/=>/ {print $3} /^[[:space:]]*\// {print $1}' | sort -u | while read -r lib; do
  [ -n "$lib" ] && [ -e "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 packaging/container/fipsrelay.toml "$root/etc/fipsrelay/fipsrelay.toml"
printf 'root:x:0:0:root:/:/sbin/nologin\nfipsrelay:x:10001:10001:fipsrelay:/:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nfipsrelay:x:10001:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
cp packaging/Containerfile "$work/Containerfile"

"${builder[@]}" --pull=never -f "$work/Containerfile" -t "$name:$version" -t "$name:latest" "$work"
echo "image.sh: built $name:$version and $name:latest ($(du -sh "$root" | cut -f1) root filesystem)"
