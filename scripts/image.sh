#!/usr/bin/env bash
# Builds the container image of fipsrelay FROM scratch with buildah (or
# podman), offline: no base image, only this host's files. The root
# filesystem holds the binary, the shared libraries it links when it is not
# static (found with ldd), the CA bundle, /etc/fipsrelay/fipsrelay.toml and
# passwd/group entries for uid 10001.
#
#   scripts/image.sh [--tag NAME] [--archive FILE]
#       both architectures, from the static release builds of
#       scripts/build-static.sh: images NAME:<version>-amd64 and
#       NAME:<version>-arm64, and the manifest list of the two as
#       NAME:<version> and NAME:latest; --archive also writes that list with
#       both images to an OCI archive (scripts/release.sh does).
#   scripts/image.sh --binary PATH [--tag NAME]
#       one image of that binary, for its architecture, as NAME:<version>
#       and NAME:latest (tests/image.rs builds one of the binary under test).
# NAME defaults to fipsrelay.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""
name="fipsrelay"
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) name="$2"; shift 2 ;;
    --archive) archive="$2"; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (use --binary PATH, --tag NAME, --archive FILE)" >&2; exit 2 ;;
  esac
done
if command -v buildah >/dev/null 2>&1; then
  builder=(buildah build --isolation chroot)
  manifest=(buildah manifest)
elif command -v podman >/dev/null 2>&1; then
  builder=(podman build)
  manifest=(podman manifest)
else
  echo "image.sh: neither buildah nor podman is installed: apt-get install buildah (or podman)" >&2
  exit 1
fi
[ -n "$binary" ] && [ -n "$archive" ] && { echo "image.sh: --archive is for the two-architecture build (leave out --binary)" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca_bundle" ] || { echo "image.sh: no CA bundle at $ca_bundle: apt-get install ca-certificates" >&2; exit 1; }
mkdir -p target
work=$(mktemp -d target/image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# build_image BINARY TAG...: one image of BINARY, for the architecture its
# ELF header names, tagged TAG...
build_image() {
  local binary="$1" arch root
  shift
  [ -x "$binary" ] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
  case "$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')" in
    62) arch=amd64 ;;
    183) arch=arm64 ;;
    *) echo "image.sh: $binary is neither an x86_64 nor an aarch64 executable" >&2; exit 1 ;;
  esac
  root="$work/$arch/rootfs"
  mkdir -p "$root/usr/bin" "$root/etc/fipsrelay" "$root/etc/ssl/certs" "$root/tmp"
  install -m 0755 "$binary" "$root/usr/bin/fipsrelay"
  # A dynamically linked binary (a development build): the dynamic loader
  # and every library it links, at the same paths. A static one needs none.
  if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
    ldd "$binary" | awk '/=>/ {print $3} /^[[:space:]]*\// {print $1}' | sort -u | while read -r lib; do
      [ -n "$lib" ] && [ -e "$lib" ] || continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  fi
  install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  install -m 0644 packaging/container/fipsrelay.toml "$root/etc/fipsrelay/fipsrelay.toml"
  printf 'root:x:0:0:root:/:/sbin/nologin\nfipsrelay:x:10001:10001:fipsrelay:/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nfipsrelay:x:10001:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
  cp packaging/Containerfile "$work/$arch/Containerfile"
  local tags=()
  for t in "$@"; do tags+=(-t "$t"); done
  "${builder[@]}" --pull=never --platform "linux/$arch" -f "$work/$arch/Containerfile" "${tags[@]}" "$work/$arch"
  echo "image.sh: built $* (linux/$arch, $(du -sh "$root" | cut -f1) root filesystem)"
}

if [ -n "$binary" ]; then
  build_image "$binary" "$name:$version" "$name:latest"
  exit 0
fi

amd64=$(scripts/build-static.sh --arch amd64 | tail -1)
arm64=$(scripts/build-static.sh --arch arm64 | tail -1)
build_image "$amd64" "$name:$version-amd64"
build_image "$arm64" "$name:$version-arm64"
for list in "$name:$version" "$name:latest"; do
  # A list or image of that name from an earlier run goes first.
  "${manifest[@]}" rm "$list" >/dev/null 2>&1 || true
  buildah rmi "$list" >/dev/null 2>&1 || true
  "${manifest[@]}" create "$list" >/dev/null
  for arch in amd64 arm64; do
    "${manifest[@]}" add "$list" "containers-storage:localhost/$name:$version-$arch" >/dev/null
  done
done
echo "image.sh: manifest list $name:$version and $name:latest: linux/amd64 and linux/arm64"
if [ -n "$archive" ]; then
  rm -f "$archive"
  "${manifest[@]}" push --all "$name:$version" "oci-archive:$archive:$name:$version" >/dev/null
  echo "image.sh: wrote $archive (OCI archive of $name:$version, both architectures)"
fi
