#!/usr/bin/env bash
# Runs the system as far as it exists (see README.md). Today: a simulated RS-485 bus of four lock
# controllers (dmr-lock-sim) on a pty and Modbus TCP, with its control API, state kept under
# target/demo/. Ctrl-C stops it cleanly. The cloud and the gateway agent join this command as
# their issues land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --minimal
cargo build --locked --release -p dmr-firmware-sim
RUN_DIR=${DMR_RUN_DIR:-$PWD/target/demo}
mkdir -p "$RUN_DIR"
cat <<MSG
Starting a bus of 4 simulated locks (addresses 1-4). It prints its pty, Modbus TCP and control URLs.
  Look at the locks:     curl -s http://<CONTROL>/locks
  Open a door:           curl -s -XPOST http://<CONTROL>/locks/1/door -d '{"open":true}' -H 'content-type: application/json'
  Talk Modbus to it:     mbpoll -m rtu -a 1 -b 9600 -P none -t 3 -r 0 -c 16 -0 -1 $RUN_DIR/ttyLOCKS
Ctrl-C stops it; state persists in $RUN_DIR/locks.json.
MSG
exec target/release/dmr-lock-sim --locks 4 --link "$RUN_DIR/ttyLOCKS" --tcp 127.0.0.1:0 \
  --control 127.0.0.1:0 --state "$RUN_DIR/locks.json"
