#!/usr/bin/env bash
# First-load benchmark (scripts/bench-load.mjs) against dmr-cloud serving dist/ itself,
# with a throw-away SQLite database and platform admin. Run after `npm run build`:
#   CLOUD_BIN=../../target/debug/dmr-cloud scripts/bench-load.sh   (BENCH_RUNS=15 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CLOUD_BIN:-../../target/debug/dmr-cloud}
[ -x "$BIN" ] || { echo "dmr-cloud binary not found at $BIN (set CLOUD_BIN)"; exit 2; }
[ -f dist/index.html ] || { echo "run npm run build first"; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PORT=$(free_port)
MQTT_PORT=$(free_port)
# The cloud needs a master key, and its embedded broker gets a free port (1883 may be taken).
DMR_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export DMR_MASTER_KEY DMR_MQTT_EMBEDDED_LISTEN=127.0.0.1:$MQTT_PORT DMR_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT \
  DMR_GATEWAY_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
export DMR_SERVER_LISTEN=127.0.0.1:$PORT DMR_SERVER_PUBLIC_BASE_URL=http://127.0.0.1:$PORT \
  DMR_DATABASE_URL="sqlite://$WORK/dmr.db?mode=rwc" DMR_SERVER_WEB_DIR="$PWD/dist" DMR_LOG_FILTER=warn
PASSWORD="bench-admin-$RANDOM-$RANDOM"
echo "$PASSWORD" | "$BIN" admin create-user --username bench-ops --display-name Bench >/dev/null
"$BIN" serve >"$WORK/cloud.log" 2>&1 &
CLOUD_PID=$!
trap 'kill $CLOUD_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break
  sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" || { echo "dmr-cloud did not start:"; cat "$WORK/cloud.log"; exit 1; }
BENCH_BASE=http://127.0.0.1:$PORT BENCH_ADMIN=bench-ops BENCH_ADMIN_PASSWORD=$PASSWORD node scripts/bench-load.mjs
