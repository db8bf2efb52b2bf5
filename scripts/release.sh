#!/usr/bin/env bash
# The release: builds the static binaries for amd64 and arm64
# (scripts/build-static.sh), checks them, packages them, builds the
# two-architecture image, checks those, and ends by printing what it
# checked. Into target/dist/:
#   fipsrelay_<v>-1_amd64.deb   fipsrelay-<v>-1.x86_64.rpm
#   fipsrelay_<v>-1_arm64.deb   fipsrelay-<v>-1.aarch64.rpm
#   fipsrelay-<v>-image.oci.tar (the manifest list fipsrelay:<v>: linux/amd64 and linux/arm64)
#   SHA256SUMS
# The checks: tests/platforms.rs on both binaries (static; `version` reports
# the validated module with fips enabled; requests relayed byte for byte
# through the mock intake, the arm64 binary under qemu-aarch64-static), the
# packages' architecture and dependencies, and the image's two entries.
# Installs what it needs when missing (scripts/setup.sh --release). On a
# 2-core machine the first run takes about half an hour (two FIPS module
# builds, two LTO links); ./scripts/test.sh is the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --release
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
dist=target/dist
mkdir -p "$dist"
rm -f "$dist"/fipsrelay[_-]*
checked=()
check() { checked+=("$*"); }
fail() { echo "release.sh: FAILED: $*" >&2; exit 1; }

# 1. The binaries.
declare -A bin
for arch in amd64 arm64; do
  started=$(date +%s)
  bin[$arch]=$(scripts/build-static.sh --arch "$arch" | tail -1)
  check "$arch binary: ${bin[$arch]} ($(du -h "${bin[$arch]}" | cut -f1), built or found up to date in $(( $(date +%s) - started )) s)"
done

# 2. The binaries' checks (tests/platforms.rs): the native amd64 binary and
# the arm64 one under qemu; a SKIPPED here is a failure.
log="$dist/platforms-test.log"
if ! FIPSRELAY_STATIC_AMD64="${bin[amd64]}" FIPSRELAY_STATIC_ARM64="${bin[arm64]}" \
  cargo test --locked --test platforms -- --test-threads 1 --nocapture 2>&1 | tee "$log"; then
  fail "tests/platforms.rs (log: $log)"
fi
! grep -q '^SKIPPED' "$log" || fail "tests/platforms.rs skipped a check: $(grep '^SKIPPED' "$log")"
chroot_note=$(grep -q 'was not run' "$log" && echo "not in an empty chroot (not root)" || echo "also alone in an empty chroot")
check "amd64 binary: statically linked (no interpreter, no NEEDED, no GLIBC_ symbol: readelf); the pinned FIPS module's symbols and no other AWS-LC; version: fips enabled, validated module, $chroot_note; relays byte for byte on epoll and io_uring (tests/platforms.rs)"
check "arm64 binary: statically linked (readelf); the pinned FIPS module's symbols only; under qemu-aarch64-static: version: fips enabled, validated module; relays byte for byte on epoll; $(grep -o 'PROBE: .*' "$log" | head -1) (tests/platforms.rs)"

# 3. The packages.
for arch in amd64 arm64; do
  scripts/package.sh --arch "$arch" --binary "${bin[$arch]}" --out "$dist"
done
for arch in amd64:x86_64 arm64:aarch64; do
  deb_arch=${arch%%:*} rpm_arch=${arch##*:}
  deb="$dist/fipsrelay_${version}-1_${deb_arch}.deb"
  rpm="$dist/fipsrelay-${version}-1.${rpm_arch}.rpm"
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$deb_arch" ] || fail "$deb: Architecture is not $deb_arch"
  [ -z "$(dpkg-deb -f "$deb" Depends)" ] || fail "$deb depends on $(dpkg-deb -f "$deb" Depends)"
  rpm -qpi "$rpm" | grep -q "^Architecture: $rpm_arch\$" || fail "$rpm: Architecture is not $rpm_arch"
  ! rpm -qp --requires "$rpm" | grep -q 'libc\.so\|GLIBC' || fail "$rpm requires glibc: $(rpm -qp --requires "$rpm" | grep 'libc\.so')"
  # What the oldest package managers read: RHEL 7's rpm 4.11 no zstd
  # payload, Ubuntu 14.04's dpkg 1.17.5 no xz control member.
  ! rpm -qp --requires "$rpm" | grep -q 'PayloadIsZstd' || fail "$rpm has a zstd payload, which RHEL 7's rpm cannot read"
  ar t "$deb" | grep -qx control.tar.gz || fail "$deb: the control member is not gzip, which Ubuntu 14.04's dpkg needs"
  for pkg in "$deb" "$rpm"; do
    got=$(mktemp -d)
    if [ "${pkg%.deb}" != "$pkg" ]; then dpkg-deb -x "$pkg" "$got"; else (cd "$got" && rpm2cpio "$OLDPWD/$pkg" | cpio -idm --quiet); fi
    cmp -s "$got/usr/bin/fipsrelay" "${bin[$deb_arch]}" || fail "$pkg: /usr/bin/fipsrelay is not the checked $deb_arch binary"
    rm -rf "$got"
  done
  check "$deb: Architecture $deb_arch, no Depends, gzip control member; $rpm: Architecture $rpm_arch, no libc requirement, $(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpm") payload; both hold the checked binary"
done

# 4. The image: both architectures and the manifest list.
scripts/image.sh --archive "$dist/fipsrelay-$version-image.oci.tar"
platforms=$(buildah manifest inspect "fipsrelay:$version" | grep -o '"architecture": *"[a-z0-9]*"' | sed 's/.*"\([a-z0-9]*\)"$/\1/' | sort | tr '\n' ' ')
[ "$platforms" = "amd64 arm64 " ] || fail "manifest list fipsrelay:$version holds: $platforms"
for arch in amd64 arm64; do
  container=$(podman create --arch "$arch" "fipsrelay:$version-$arch")
  got=$(mktemp)
  podman cp "$container:/usr/bin/fipsrelay" "$got"
  podman rm "$container" >/dev/null
  cmp -s "$got" "${bin[$arch]}" || fail "image fipsrelay:$version-$arch: /usr/bin/fipsrelay is not the checked $arch binary"
  rm -f "$got"
done
check "image: manifest list fipsrelay:$version (and :latest) = linux/amd64 + linux/arm64, FROM scratch, each holding its checked binary; OCI archive written"
if ran=$(podman --runtime runc run --rm --network none "fipsrelay:$version-amd64" version 2>&1) && grep -q '^fips: enabled' <<<"$ran"; then
  check "image fipsrelay:$version-amd64 runs here: version says fips: enabled"
else
  check "image fipsrelay:$version-amd64 NOT run: containers cannot run on this machine ($(tail -1 <<<"$ran"))"
fi

(cd "$dist" && sha256sum fipsrelay[_-]* > SHA256SUMS)
echo
echo "release.sh: fipsrelay $version, in $dist:"
(cd "$dist" && ls -l fipsrelay[_-]* SHA256SUMS | awk '{printf "  %-40s %s bytes\n", $9, $5}')
echo "checked:"
for c in "${checked[@]}"; do echo "  - $c"; done
