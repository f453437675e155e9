#!/usr/bin/env bash
# Runs the system as far as it exists (see README.md), on embedded defaults with nothing to
# configure:
#   - dmr-cloud on SQLite with the console (/) and phone pages (/h5/) built from cloud/web,
#     and a platform admin login (admin / the password printed below);
#   - dmr-lock-sim: a simulated RS-485 bus of four lock controllers on a pty and Modbus TCP.
# State lives under target/demo/. Ctrl-C stops everything cleanly. The gateway agent joins
# this command as its issue lands.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --minimal
RUN_DIR=${DMR_RUN_DIR:-$PWD/target/demo}
PORT=${DMR_DEMO_PORT:-8080}
mkdir -p "$RUN_DIR"

echo "== building the console and phone pages (npm)"
( cd cloud/web && npm ci --no-audit --no-fund --loglevel=error && npm run build >/dev/null )
echo "== building the binaries (release; the first build takes a few minutes)"
cargo build --locked --release -p dmr-cloud -p dmr-firmware-sim

export DMR_DATABASE_URL="sqlite://$RUN_DIR/cloud.db"
# The master key that encrypts the cloud's signing keys: made once per demo directory.
if [ -z "${DMR_MASTER_KEY:-}" ]; then
  [ -s "$RUN_DIR/master.key" ] || (umask 077 && head -c 32 /dev/urandom | base64 > "$RUN_DIR/master.key")
  DMR_MASTER_KEY=$(cat "$RUN_DIR/master.key")
  export DMR_MASTER_KEY
fi
export DMR_SERVER_LISTEN="127.0.0.1:$PORT" DMR_SERVER_PUBLIC_BASE_URL="http://127.0.0.1:$PORT"
export DMR_SERVER_WEB_DIR="$PWD/cloud/web/dist" DMR_LOG_FORMAT=${DMR_LOG_FORMAT:-pretty}
PASSWORD_FILE="$RUN_DIR/admin.password"
if [ ! -s "$PASSWORD_FILE" ]; then
  umask 077
  head -c 12 /dev/urandom | base64 | tr -d '/+=' > "$PASSWORD_FILE"
  target/release/dmr-cloud admin create-user --username admin --role platform_admin \
    --display-name "Demo admin" --password-file "$PASSWORD_FILE" >/dev/null
fi

pids=()
stop() { trap - INT TERM EXIT; kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM EXIT

target/release/dmr-lock-sim --locks 4 --link "$RUN_DIR/ttyLOCKS" --tcp 127.0.0.1:0 \
  --control 127.0.0.1:0 --state "$RUN_DIR/locks.json" > "$RUN_DIR/sim.out" 2> "$RUN_DIR/sim.log" &
pids+=($!)
target/release/dmr-cloud serve 2> "$RUN_DIR/cloud.log" &
pids+=($!)

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && grep -q READY "$RUN_DIR/sim.out" && break
  sleep 0.2
done
control=$(sed -n 's/^CONTROL //p' "$RUN_DIR/sim.out")
cat <<MSG

Dumeiren is running (logs in $RUN_DIR):
  Console (Chinese by default, English in the menu):  http://127.0.0.1:$PORT/
  Login:                                              admin / $(cat "$PASSWORD_FILE")
  Phone pages:                                        http://127.0.0.1:$PORT/h5/
  API health:                                         http://127.0.0.1:$PORT/health
  Simulated lock bus (4 locks):                       pty $RUN_DIR/ttyLOCKS, control $control/locks
    e.g. mbpoll -m rtu -a 1 -b 9600 -P none -t 3 -r 0 -c 16 -0 -1 $RUN_DIR/ttyLOCKS
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
echo "a component stopped; see $RUN_DIR/*.log" >&2
