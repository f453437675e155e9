#!/usr/bin/env bash
# Builds the .deb packages without Docker (Debian's cross toolchain, see scripts/cross_setup.sh):
#   dmr-edge-agent (dmr-agent + dmr-tech) for amd64, arm64 and armhf;
#   dmr-cloud (with the built console and phone pages) for amd64 and arm64.
# usage: scripts/package.sh [amd64|arm64|armhf]...   (default: all three)
# Packages land in target/debian/ (amd64) and target/cross-*/<triple>/debian/ (ARM).
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/scripts
arches=("$@"); [ ${#arches[@]} -eq 0 ] && arches=(amd64 arm64 armhf)
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
( cd cloud/web && npm ci --no-audit --no-fund --loglevel=error && npm run build >/dev/null )
for arch in "${arches[@]}"; do
  case $arch in
    amd64)
      cargo deb --locked -p dmr-edge-agent
      cargo deb --locked -p dmr-cloud ;;
    arm64)
      ( . "$HERE/xenv-aarch64.sh"; export CARGO_TARGET_DIR=$PWD/target/cross-aarch64
        /usr/bin/cargo deb --locked --target aarch64-unknown-linux-gnu -p dmr-edge-agent
        /usr/bin/cargo deb --locked --target aarch64-unknown-linux-gnu -p dmr-cloud ) ;;
    armhf)
      ( . "$HERE/xenv-armv7-buildstd.sh"; export CARGO_TARGET_DIR=$PWD/target/cross-armv7
        /usr/bin/cargo deb --locked --target armv7-unknown-linux-gnueabihf --variant armhf -p dmr-edge-agent ) ;;
    *) echo "package: unknown architecture '$arch' (amd64, arm64 or armhf)" >&2; exit 64 ;;
  esac
done
find target -path '*debian/*.deb' -newer Cargo.toml -print
