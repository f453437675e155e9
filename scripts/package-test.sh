#!/usr/bin/env bash
# Builds the amd64 .deb packages and checks them for real (root, Debian 12):
#   1. control fields and contents (`dpkg-deb -I/-f/-c`): binaries, systemd units identical to
#      systemd/, example configs, changelog and copyright, and for the cloud every file of the
#      built console/phone pages; the packaged binaries' --version names this checkout's commit;
#   2. lintian: errors fail the test, warnings are printed (lintian is installed from Debian
#      the first time, about 16 MB);
#   3. installation with dpkg into a throwaway root: an overlay of this machine's own root
#      filesystem (`unshare -m`, overlayfs over /, writes to a tmpfs, then chroot), so the
#      maintainer scripts run with the real dpkg, adduser and deb-systemd-helper while the host
#      itself is never changed. It proves: a fresh install creates the service users (agent in
#      dialout), puts the units under /usr/lib/systemd/system and enables them, installs the
#      example configs (0640 root:<service group>) that pass check-config, and neither a
#      reinstall nor a fresh install over an operator's existing /etc/dmr/*.toml changes it.
# ARM packages present in target/cross-*/ are checked for contents and control fields too
# (they cannot be installed here).
#
# usage: scripts/package-test.sh [--no-build]   (--no-build: check the .debs already built)
# Takes as long as two release builds plus the web build (25 minutes on the shared 2-core
# machine under load from other builds); the checks themselves take under a minute
# (--no-build). Not part of scripts/test.sh for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
ROOT=$PWD

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
ok() { echo "package-test: ok: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (the install check uses unshare, mount and chroot)"
[ "${1:-}" = "--no-build" ] || scripts/package.sh amd64

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || fail "cannot read the workspace version from Cargo.toml"
agent_deb=target/debian/dmr-edge-agent_${version}-1_amd64.deb
cloud_deb=target/debian/dmr-cloud_${version}-1_amd64.deb
for d in "$agent_deb" "$cloud_deb"; do [ -f "$d" ] || fail "$d not built (scripts/package.sh amd64)"; done
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo "${DMR_GIT_COMMIT:-unknown}")

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# --- 1. control fields and contents ----------------------------------------------------------
field() { dpkg-deb -f "$1" "$2"; }
has() { # has DEB PATH [MODE-PREFIX]: PATH is in DEB (as listed by dpkg-deb -c)
  grep -qxF "$2" "$tmp/$(basename "$1").list" || fail "$(basename "$1") lacks $2"
}
check_deb() { # check_deb DEB ARCH PACKAGE UNIT EXAMPLE BINARIES...
  local deb=$1 arch=$2 pkg=$3 unit=$4 example=$5; shift 5
  local name; name=$(basename "$deb")
  dpkg-deb -I "$deb" >/dev/null || fail "$name is not a valid package"
  dpkg-deb -c "$deb" > "$tmp/$name.full"
  awk '{print $6}' "$tmp/$name.full" | sed 's|^\./|/|' > "$tmp/$name.list"
  [ "$(field "$deb" Package)" = "$pkg" ] || fail "$name: Package is $(field "$deb" Package)"
  [ "$(field "$deb" Architecture)" = "$arch" ] || fail "$name: Architecture is $(field "$deb" Architecture)"
  [ "$(field "$deb" Version)" = "${version}-1" ] || fail "$name: Version is $(field "$deb" Version)"
  [[ $(field "$deb" Depends) == *adduser* ]] || fail "$name: does not depend on adduser (postinst needs it)"
  [[ $(field "$deb" Depends) == *libc6* ]] || fail "$name: no libc6 dependency"
  for b in "$@"; do
    has "$deb" "/usr/bin/$b"
    grep -q "^-rwxr-xr-x .* \./usr/bin/$b\$" "$tmp/$name.full" || fail "$name: /usr/bin/$b is not mode 755"
  done
  has "$deb" "/usr/lib/systemd/system/$unit.service"
  has "$deb" "/usr/share/$pkg/$example"
  has "$deb" "/usr/share/doc/$pkg/copyright"
  has "$deb" "/usr/share/doc/$pkg/changelog.Debian.gz"
  # The packaged unit is the one the tests verify (systemd-analyze verify/security).
  dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/lib/systemd/system/$unit.service" > "$tmp/unit"
  cmp -s "$tmp/unit" "systemd/$unit.service" || fail "$name: packaged $unit.service differs from systemd/$unit.service"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/share/$pkg/$example" | cmp -s - "packaging/$example" \
    || fail "$name: packaged $example differs from packaging/$example"
  # The maintainer scripts: ours (users, configs) merged with cargo-deb's unit enabling.
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst > "$tmp/postinst"
  grep -q 'adduser --system' "$tmp/postinst" || fail "$name: postinst does not create the service user"
  grep -q 'deb-systemd-helper' "$tmp/postinst" || fail "$name: postinst does not enable the unit"
  ok "$name: control fields, binaries, unit, example config, changelog"
}

check_deb "$agent_deb" amd64 dmr-edge-agent dmr-agent agent.example.toml dmr-agent dmr-tech
check_deb "$cloud_deb" amd64 dmr-cloud dmr-cloud cloud.example.toml dmr-cloud
# Every file of the built front end is shipped (the console at /, the phone pages at /h5/).
[ -f cloud/web/dist/index.html ] || fail "cloud/web/dist is missing: the web build did not run"
( cd cloud/web/dist && find . -type f | sed 's|^\.||' | sort ) > "$tmp/web.want"
grep '^/usr/share/dmr-cloud/web/' "$tmp/$(basename "$cloud_deb").list" | grep -v '/$' \
  | sed 's|^/usr/share/dmr-cloud/web||' | sort > "$tmp/web.have"
missing=$(comm -23 "$tmp/web.want" "$tmp/web.have")
[ -z "$missing" ] || fail "dmr-cloud package lacks web files: $missing"
grep -qx '/index.html' "$tmp/web.have" && grep -qx '/h5/index.html' "$tmp/web.have" \
  && grep -q '^/assets/.*\.js$' "$tmp/web.have" || fail "dmr-cloud package lacks the console, the phone pages or their scripts"
ok "$(basename "$cloud_deb"): all $(wc -l < "$tmp/web.want") web files"

# The packaged binaries say which commit they are.
for pair in "$agent_deb:dmr-agent" "$agent_deb:dmr-tech" "$cloud_deb:dmr-cloud"; do
  deb=${pair%%:*}; b=${pair#*:}
  dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/bin/$b" > "$tmp/$b"; chmod +x "$tmp/$b"
  v=$("$tmp/$b" --version)
  [ "$v" = "$b $version (commit $commit)" ] || fail "$b --version says '$v', want '$b $version (commit $commit)'"
done
ok "packaged binaries: --version names commit $commit"

# ARM packages, when built: contents and control fields (no install: wrong architecture).
for deb in target/cross-aarch64/aarch64-unknown-linux-gnu/debian/dmr-edge-agent_"${version}"-1_arm64.deb \
           target/cross-armv7/armv7-unknown-linux-gnueabihf/debian/dmr-edge-agent_"${version}"-1_armhf.deb; do
  [ -f "$deb" ] || { echo "package-test: (not built: $deb)"; continue; }
  arch=$(field "$deb" Architecture)
  check_deb "$deb" "$arch" dmr-edge-agent dmr-agent agent.example.toml dmr-agent dmr-tech
done
deb=target/cross-aarch64/aarch64-unknown-linux-gnu/debian/dmr-cloud_${version}-1_arm64.deb
if [ -f "$deb" ]; then
  check_deb "$deb" arm64 dmr-cloud dmr-cloud cloud.example.toml dmr-cloud
else
  echo "package-test: (not built: $deb)"
fi

# --- 2. lintian -----------------------------------------------------------------------------
if ! command -v lintian >/dev/null; then
  echo "package-test: installing lintian" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends lintian >/dev/null
fi
# Exit status 2 means "errors found"; tags go to stdout.
lintian --tag-display-limit 0 "$agent_deb" "$cloud_deb" > "$tmp/lintian" 2>/dev/null || true
cat "$tmp/lintian"
if grep -q '^E:' "$tmp/lintian"; then fail "lintian reports errors (above)"; fi
ok "lintian: no errors ($(grep -c '^W:' "$tmp/lintian" || true) warnings, listed above)"

# --- 3. install into a throwaway root -----------------------------------------------------
mkdir -p "$tmp/debs"
cp "$agent_deb" "$tmp/debs/agent.deb"; cp "$cloud_deb" "$tmp/debs/cloud.deb"
cp "$ROOT/systemd/dmr-agent.service" "$ROOT/systemd/dmr-cloud.service" "$tmp/debs/"
cat > "$tmp/debs/inside.sh" <<'INSIDE'
#!/bin/sh
# Runs chrooted in the overlay: the host's root filesystem, every write thrown away afterwards.
set -eu
fail() { echo "package-test: FAIL (install): $*" >&2; exit 1; }
cd /pkgtest
# Start from a machine that never had the packages, whatever the host has.
dpkg --purge dmr-edge-agent dmr-cloud >/dev/null 2>&1 || true
for u in dmr-agent dmr-cloud; do getent passwd $u >/dev/null && deluser --system $u >/dev/null 2>&1; done
rm -rf /etc/dmr

# Fresh install: users, units, enabled, example configs installed.
dpkg -i agent.deb cloud.deb >dpkg1.log 2>&1 || { cat dpkg1.log; fail "dpkg -i (fresh) failed"; }
for s in agent:dmr-edge-agent:dmr-agent cloud:dmr-cloud:dmr-cloud; do
  c=${s%%:*}; rest=${s#*:}; pkg=${rest%%:*}; unit=${rest#*:}
  [ "$(dpkg-query -W -f='${Status}' $pkg)" = "install ok installed" ] || fail "$pkg not configured"
  getent passwd $unit >/dev/null || fail "user $unit not created"
  shell=$(getent passwd $unit | cut -d: -f7); case $shell in */nologin|*/false) ;; *) fail "$unit has a login shell $shell";; esac
  [ "$(getent passwd $unit | cut -d: -f6)" = "/var/lib/$unit" ] || fail "$unit home is not /var/lib/$unit"
  [ -f /etc/dmr/$c.toml ] || fail "/etc/dmr/$c.toml not installed"
  cmp -s /etc/dmr/$c.toml /usr/share/$pkg/$c.example.toml || fail "/etc/dmr/$c.toml is not the example"
  [ "$(stat -c '%a %U %G' /etc/dmr/$c.toml)" = "640 root $unit" ] || fail "/etc/dmr/$c.toml is $(stat -c '%a %U %G' /etc/dmr/$c.toml)"
  cmp -s /usr/lib/systemd/system/$unit.service /pkgtest/$unit.service || fail "$unit.service not at /usr/lib/systemd/system"
  [ -L /etc/systemd/system/multi-user.target.wants/$unit.service ] || fail "$unit.service not enabled"
  [ "$(readlink -f /etc/systemd/system/multi-user.target.wants/$unit.service)" = "/usr/lib/systemd/system/$unit.service" ] \
    || fail "$unit.service enable link points elsewhere"
  systemd-analyze verify --man=no --generators=no /usr/lib/systemd/system/$unit.service \
    || fail "installed $unit.service does not verify"
done
id -nG dmr-agent | tr ' ' '\n' | grep -qx dialout || fail "dmr-agent is not in dialout"
out=$(/usr/bin/dmr-agent check-config --config /etc/dmr/agent.toml 2>&1) \
  || { echo "$out"; fail "the installed agent.toml does not pass check-config"; }
# A master key in the environment, as /etc/dmr/cloud.env provides it to the service.
out=$(DMR_MASTER_KEY=$(head -c 32 /dev/urandom | base64) /usr/bin/dmr-cloud --config /etc/dmr/cloud.toml check-config 2>&1) \
  || { echo "$out"; fail "the installed cloud.toml does not pass check-config"; }
echo "package-test: ok: fresh install (users, units enabled, example configs pass check-config)"

# The operator edits the configs; a reinstall (same as an upgrade's postinst) keeps them.
for c in agent cloud; do printf '\n# edited by the operator\n' >> /etc/dmr/$c.toml; cp -p /etc/dmr/$c.toml $c.saved; done
dpkg -i agent.deb cloud.deb >dpkg2.log 2>&1 || { cat dpkg2.log; fail "dpkg -i (reinstall) failed"; }
for c in agent cloud; do cmp -s /etc/dmr/$c.toml $c.saved || fail "reinstall overwrote /etc/dmr/$c.toml"; done

# Purge, then a fresh install onto configs that are already there (say, restored from a backup
# before installing): they stay as they are, even with other owners and modes.
dpkg --purge dmr-edge-agent dmr-cloud >purge.log 2>&1 || { cat purge.log; fail "dpkg --purge failed"; }
[ ! -e /usr/bin/dmr-agent ] || fail "purge left /usr/bin/dmr-agent"
[ ! -e /usr/lib/systemd/system/dmr-agent.service ] || fail "purge left dmr-agent.service"
for c in agent cloud; do
  printf '# restored by the operator before installing (%s)\n' $c > /etc/dmr/$c.toml
  chmod 600 /etc/dmr/$c.toml; cp -p /etc/dmr/$c.toml $c.saved
done
dpkg -i agent.deb cloud.deb >dpkg3.log 2>&1 || { cat dpkg3.log; fail "dpkg -i (over existing configs) failed"; }
for c in agent cloud; do
  cmp -s /etc/dmr/$c.toml $c.saved || fail "install overwrote the existing /etc/dmr/$c.toml"
  [ "$(stat -c '%a' /etc/dmr/$c.toml)" = 600 ] || fail "install changed the mode of /etc/dmr/$c.toml"
done
echo "package-test: ok: neither a reinstall nor a fresh install over existing configs changes /etc/dmr/*.toml"
INSIDE
chmod +x "$tmp/debs/inside.sh"

host_state() { getent passwd dmr-agent dmr-cloud || true; ls -la /etc/dmr 2>/dev/null || true
  dpkg-query -W -f='${Package} ${Status}\n' dmr-edge-agent dmr-cloud 2>/dev/null || true; }
host_before=$(host_state)
# Overlay: lower = the host's /, upper = a tmpfs; /proc and /dev bound in for the scripts.
unshare -m --propagation private sh -eu -c '
  t=$1
  mkdir -p "$t/ov" && mount -t tmpfs tmpfs "$t/ov"
  mkdir -p "$t/ov/upper" "$t/ov/work" "$t/ov/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$t/ov/upper,workdir=$t/ov/work" "$t/ov/root"
  mount --rbind /proc "$t/ov/root/proc"; mount --rbind /dev "$t/ov/root/dev"
  mkdir -p "$t/ov/root/pkgtest" && cp -a "$t/debs/." "$t/ov/root/pkgtest/"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$t/ov/root" /pkgtest/inside.sh
' sh "$tmp"
# The host saw none of it.
[ "$(host_state)" = "$host_before" ] || fail "the install changed the host (users, /etc/dmr or packages)"
echo "package-test: all package checks passed"
