#!/usr/bin/env bash
# Cross builds the gateway-side crates for ARM gateways with Debian's toolchain (no Docker) and
# runs their tests under qemu-user. People with Docker can use `cross` and Cross.toml instead.
#   scripts/cross-test.sh [aarch64|armv7]...     (default: aarch64)
# Gateway crates: dmr-protocol (all tests under qemu), dmr-edge-agent and dmr-firmware-sim
# (binaries built for the target; unit and in-process tests under qemu, see below).
# Needs scripts/setup.sh (or scripts/cross_setup.sh) first.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/scripts
targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(aarch64)
for arch in "${targets[@]}"; do
  (
    case $arch in
      aarch64) . "$HERE/xenv-aarch64.sh"; T=aarch64-unknown-linux-gnu ;;
      armv7)   . "$HERE/xenv-armv7-buildstd.sh"; T=armv7-unknown-linux-gnueabihf ;;
      *) echo "cross-test: unknown target '$arch' (aarch64 or armv7)" >&2; exit 64 ;;
    esac
    # Debian's rustc must build with its own std: keep its artifacts apart from rustup's.
    export CARGO_TARGET_DIR=$PWD/target/cross-$arch
    # Fewer proptest cases under emulation; the native run covers the full count.
    export PROPTEST_CASES=${PROPTEST_CASES:-32}
    s=$(date +%s)
    # Tests that spawn our own binaries cannot run here (without binfmt_misc the kernel cannot
    # exec an ARM binary that an emulated test starts), so the gateway crates run their unit
    # tests and the in-process driver tests; the protocol crate runs everything.
    /usr/bin/cargo build --locked --target "$T" -p dmr-edge-agent -p dmr-firmware-sim --bins
    /usr/bin/cargo test --locked --target "$T" -p dmr-protocol --no-run
    /usr/bin/cargo test --locked --target "$T" -p dmr-edge-agent --lib --test bus_pipe --no-run
    /usr/bin/cargo test --locked --target "$T" -p dmr-firmware-sim --lib --no-run
    b=$(date +%s)
    /usr/bin/cargo test --locked --target "$T" -p dmr-protocol
    /usr/bin/cargo test --locked --target "$T" -p dmr-edge-agent --lib --test bus_pipe
    /usr/bin/cargo test --locked --target "$T" -p dmr-firmware-sim --lib
    e=$(date +%s)
    echo "cross-test $arch: build $((b-s)) s, tests under qemu $((e-b)) s"
  )
done
