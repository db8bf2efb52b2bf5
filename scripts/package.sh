#!/usr/bin/env bash
# Builds the deb and rpm packages of fipsrelay into target/packages/ with
# dpkg-deb and rpmbuild (Debian packages: dpkg, rpm), from the Cargo
# metadata (name, version, description, license) and packaging/:
#   /usr/bin/fipsrelay                          the release binary
#   /lib/systemd/system (deb) or /usr/lib/systemd/system (rpm)/fipsrelay.service
#   /usr/lib/sysusers.d/fipsrelay.conf          the service user
#   /etc/fipsrelay/fipsrelay.toml               conffile: upgrades keep the operator's copy
#   /usr/share/fipsrelay/datadog-fips-proxy-check  run at install: is the FIPS Proxy running or enabled?
#   /usr/share/fipsrelay/tuning/                sysctl profiles (fipsrelay tuning check)
#   /usr/share/fipsrelay/create-admin-token     run at install: 0600, owned by fipsrelay
#   /usr/share/fipsrelay/datadog-agent/fipsrelay.d/conf.yaml
#                                               the Agent's check and logs config, to copy
#                                               into /etc/datadog-agent/conf.d/
# Maintainer scripts: packaging/deb/*, and the scriptlets in packaging/rpm/fipsrelay.spec.in.
#
#   scripts/package.sh [--arch amd64|arm64] [--binary PATH] [--out DIR] [--fast] [--version V]
# Default: amd64, the static release build of scripts/build-static.sh for
# --arch, into target/packages. --binary packages that binary instead (its
# ELF machine must match --arch). The deb's Depends names the glibc the
# binary needs (the highest GLIBC_x.y it references), none for a static one;
# rpmbuild finds the same by itself. --fast compresses lightly (gzip -1), for
# tests that package a debug binary; --version overrides Cargo.toml's (tests
# build a second version to check upgrades).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""
arch=amd64
out=target/packages
fast=0
version_override=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) fast=1; shift ;;
    --version) version_override="$2"; shift 2 ;;
    *) echo "package.sh: unknown argument $1 (use --arch amd64|arm64, --binary PATH, --out DIR, --fast, --version V)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb rpmbuild; do
  command -v "$tool" >/dev/null 2>&1 || { echo "package.sh: $tool not found: apt-get install dpkg rpm" >&2; exit 1; }
done
# Debian's and RPM's names for the architecture, and its ELF e_machine.
case "$arch" in
  amd64) arch_deb=amd64 arch_rpm=x86_64 machine=62 ;;
  arm64) arch_deb=arm64 arch_rpm=aarch64 machine=183 ;;
  *) echo "package.sh: --arch $arch is not packaged (use amd64 or arm64)" >&2; exit 2 ;;
esac
if [ -z "$binary" ]; then
  binary=$(scripts/build-static.sh --arch "$arch" | tail -1)
fi
[ -x "$binary" ] || { echo "package.sh: $binary is not an executable" >&2; exit 1; }
[ "$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')" = "$machine" ] \
  || { echo "package.sh: $binary is not an $arch_rpm executable; build it for --arch $arch (scripts/build-static.sh --arch $arch)" >&2; exit 1; }
# The glibc the binary needs: none when it is static (no program interpreter).
depends=""
if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
  glibc=$(readelf -VW "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  [ -n "$glibc" ] && depends="Depends: libc6 (>= $glibc)"
fi

# Cargo metadata: the [package] table (license from [workspace.package]).
field() { sed -n "/^\[$1\]/,/^\[/s/^$2 = \"\(.*\)\"/\1/p" Cargo.toml | head -1; }
name=$(field package name)
version=${version_override:-$(field package version)}
description=$(field package description)
license=$(field workspace.package license)
[ -n "$name" ] && [ -n "$version" ] && [ -n "$description" ] && [ -n "$license" ] \
  || { echo "package.sh: cannot read name, version, description and license from Cargo.toml" >&2; exit 1; }

mkdir -p "$out" target
work=$(mktemp -d target/package-work.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Files both packages install, under a staging root; $1 = the unit directory.
stage() {
  local root="$1" unitdir="$2"
  install -D -m 0755 "$binary" "$root/usr/bin/fipsrelay"
  install -d "$root$unitdir"
  # The repository's unit runs /usr/local/bin/fipsrelay (a manual install).
  sed 's|/usr/local/bin/fipsrelay|/usr/bin/fipsrelay|g' packaging/fipsrelay.service > "$root$unitdir/fipsrelay.service"
  chmod 0644 "$root$unitdir/fipsrelay.service"
  install -D -m 0644 packaging/fipsrelay.sysusers "$root/usr/lib/sysusers.d/fipsrelay.conf"
  install -D -m 0644 packaging/fipsrelay.toml "$root/etc/fipsrelay/fipsrelay.toml"
  install -D -m 0755 packaging/datadog-fips-proxy-check "$root/usr/share/fipsrelay/datadog-fips-proxy-check"
  install -d "$root/usr/share/fipsrelay/tuning"
  install -m 0644 tuning/*.conf tuning/README.md "$root/usr/share/fipsrelay/tuning/"
  install -m 0755 packaging/create-admin-token "$root/usr/share/fipsrelay/create-admin-token"
  install -D -m 0644 packaging/datadog-agent/fipsrelay.d/conf.yaml \
    "$root/usr/share/fipsrelay/datadog-agent/fipsrelay.d/conf.yaml"
  install -D -m 0644 README.md "$root/usr/share/doc/fipsrelay/README.md"
  # The README and the example config point into docs/: shipped beside it.
  install -d "$root/usr/share/doc/fipsrelay/docs"
  install -m 0644 docs/*.md "$root/usr/share/doc/fipsrelay/docs/"
}

# --- deb ---
deb="$work/deb"
stage "$deb" /lib/systemd/system
install -d "$deb/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$deb/DEBIAN/"
echo /etc/fipsrelay/fipsrelay.toml > "$deb/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
cat > "$deb/DEBIAN/control" <<CONTROL
Package: $name
Version: $version-1
Architecture: $arch_deb
Maintainer: fipsrelay developers <fipsrelay@localhost>
Installed-Size: $size
${depends:+$depends
}Section: net
Priority: optional
Homepage: https://github.com/fipsrelay/fipsrelay
Description: $description
 Relays the Datadog Agent's plaintext HTTP on 127.0.0.1:9804-9818 over TLS
 from the AWS-LC FIPS module (FIPS 140-3 certificate #5314) to the US1-FED
 intake, in place of the HAProxy-based Datadog Agent FIPS Proxy.
CONTROL
deb_file="$out/${name}_${version}-1_${arch_deb}.deb"
compress=()
[ "$fast" = 1 ] && compress=(-Zgzip -z1)
# The control member stays gzip (--no-uniform-compression): Ubuntu 14.04's
# dpkg (1.17.5) reads xz data but not an xz control member.
dpkg-deb --root-owner-group --no-uniform-compression "${compress[@]}" --build "$deb" "$deb_file" >/dev/null

# --- rpm ---
rpmroot="$(pwd)/$work/rpm"
stage "$rpmroot/stage" /usr/lib/systemd/system
mkdir -p "$rpmroot"/{BUILD,RPMS,SPECS,SRPMS,BUILDROOT}
sed -e "s|@VERSION@|$version|" -e "s|@DESCRIPTION@|$description|" -e "s|@LICENSE@|$license|" \
    -e "s|@STAGE@|$rpmroot/stage|" packaging/rpm/fipsrelay.spec.in > "$rpmroot/SPECS/fipsrelay.spec"
# Debian's rpmbuild has no RPM database to check build dependencies against.
payload=()
[ "$fast" = 1 ] && payload=(--define "_binary_payload w1.gzdio")
rpmbuild --quiet -bb --nodeps --target "$arch_rpm-linux" "${payload[@]}" --define "_topdir $rpmroot" --define "_build_id_links none" \
    --define "debug_package %{nil}" --define "__strip /bin/true" "$rpmroot/SPECS/fipsrelay.spec" >/dev/null
rpm_file="$out/$name-$version-1.$arch_rpm.rpm"
cp "$rpmroot/RPMS/$arch_rpm/$name-$version-1.$arch_rpm.rpm" "$rpm_file"
echo "package.sh: built $deb_file and $rpm_file"
