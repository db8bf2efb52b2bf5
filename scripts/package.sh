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
#   scripts/package.sh [--binary PATH] [--out DIR] [--fast] [--version V]
# Default: a release build, into target/packages. --fast compresses lightly
# (gzip -1), for tests that package a debug binary; --version overrides
# Cargo.toml's (tests build a second version to check upgrades).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""
out=target/packages
fast=0
version_override=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) fast=1; shift ;;
    --version) version_override="$2"; shift 2 ;;
    *) echo "package.sh: unknown argument $1 (use --binary PATH, --out DIR)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb rpmbuild; do
  command -v "$tool" >/dev/null 2>&1 || { echo "package.sh: $tool not found: apt-get install dpkg rpm" >&2; exit 1; }
done
if [ -z "$binary" ]; then
  cargo build --release --locked --bin fipsrelay
  binary=target/release/fipsrelay
fi
[ -x "$binary" ] || { echo "package.sh: $binary is not an executable" >&2; exit 1; }

# Cargo metadata: the [package] table (license from [workspace.package]).
field() { sed -n "/^\[$1\]/,/^\[/s/^$2 = \"\(.*\)\"/\1/p" Cargo.toml | head -1; }
name=$(field package name)
version=${version_override:-$(field package version)}
description=$(field package description)
license=$(field workspace.package license)
[ -n "$name" ] && [ -n "$version" ] && [ -n "$description" ] && [ -n "$license" ] \
  || { echo "package.sh: cannot read name, version, description and license from Cargo.toml" >&2; exit 1; }
arch_deb=amd64
[ "$(uname -m)" = "x86_64" ] || { echo "package.sh: only x86_64 is packaged (this is $(uname -m))" >&2; exit 1; }

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
Depends: libc6 (>= 2.34)
Section: net
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
dpkg-deb --root-owner-group "${compress[@]}" --build "$deb" "$deb_file" >/dev/null

# --- rpm ---
rpmroot="$(pwd)/$work/rpm"
stage "$rpmroot/stage" /usr/lib/systemd/system
mkdir -p "$rpmroot"/{BUILD,RPMS,SPECS,SRPMS,BUILDROOT}
sed -e "s|@VERSION@|$version|" -e "s|@DESCRIPTION@|$description|" -e "s|@LICENSE@|$license|" \
    -e "s|@STAGE@|$rpmroot/stage|" packaging/rpm/fipsrelay.spec.in > "$rpmroot/SPECS/fipsrelay.spec"
# Debian's rpmbuild has no RPM database to check build dependencies against.
payload=()
[ "$fast" = 1 ] && payload=(--define "_binary_payload w1.gzdio")
rpmbuild --quiet -bb --nodeps "${payload[@]}" --define "_topdir $rpmroot" --define "_build_id_links none" \
    --define "debug_package %{nil}" --define "__strip /bin/true" "$rpmroot/SPECS/fipsrelay.spec"
rpm_file="$out/$name-$version-1.x86_64.rpm"
cp "$rpmroot/RPMS/x86_64/$name-$version-1.x86_64.rpm" "$rpm_file"
echo "package.sh: built $deb_file and $rpm_file"
