#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian 12 machine of this project's kind
# (root, Rust via rustup already present). Idempotent and quick when everything is there.
#   scripts/setup.sh            test + demo prerequisites (Mosquitto, socat, mbpoll, pymodbus venv,
#                               ARM cross toolchain and qemu-user, promtool and nginx)
#   scripts/setup.sh --minimal  only what `scripts/run.sh` needs (nothing beyond Rust today)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

minimal=0
[ "${1:-}" = "--minimal" ] && minimal=1

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do have_pkg "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

[ $minimal = 1 ] && exit 0

# Brokers, serial peers, databases.
apt_install mosquitto mosquitto-clients socat mbpoll python3-venv postgresql-15 postgresql-client-15

# The wechatpay API tests make their notifications with an independent implementation
# (cloud/tests/api/wechatpay_notify.py, Python `cryptography`).
apt_install python3-cryptography

# Checkers of the operations examples (scripts/check-ops-configs.sh): promtool comes with
# Debian's prometheus package, nginx -t with nginx-light; the services themselves are not used.
apt_install prometheus nginx-light

# The web end-to-end test drives Debian's Chromium with playwright-core (no browser download);
# the Chinese pages need a CJK font to render.
apt_install chromium fonts-wqy-microhei

# pymodbus, the independent Modbus peer, pinned (its API churns).
VENV=${DMR_PYVENV:-$PWD/target/pyvenv}
if ! "$VENV/bin/python" -c 'import pymodbus, serial' 2>/dev/null; then
  echo "setup: creating $VENV with pymodbus" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'pymodbus[serial]==3.16.1'
fi

# ARM cross toolchain (Debian rustc-web + qemu-user), never armhf multiarch (see scripts/cross_setup.sh).
if ! { have_pkg rustc-web && have_pkg libstd-rust-web-dev:arm64 && have_pkg qemu-user-static \
       && have_pkg gcc-aarch64-linux-gnu && have_pkg rust-web-src && have_pkg gcc-arm-linux-gnueabihf; }; then
  scripts/cross_setup.sh >&2
fi
