#!/usr/bin/env bash
# Builds nothing: runs the browser walk-through (scripts/e2e.mjs) against a fresh dmr-cloud.
#   CLOUD_BIN=../../target/debug/dmr-cloud scripts/e2e.sh    (after `npm run build`)
# Starts dmr-cloud on a free loopback port with a throw-away SQLite database and a platform
# admin, serves dist/ with `vite preview` proxying /api, /pay and /q to it, runs the checks,
# stops both. Screenshots go to e2e-shots/<UTC time of the run>/ (E2E_SHOTS overrides).
# E2E_ORDERS=1 / E2E_LINK=1 open the gated parts of the scenario (see e2e.mjs); with
# E2E_LINK=1, E2E_LINK_UP must start dmr-agent + dmr-lock-sim (it gets ENROLL_CODE,
# LOCK_DEVICE_CODE, LOCK_BUS_ADDRESS, CLOUD_URL).
# E2E_LINK_UP defaults to scripts/e2e-link-up.sh with AGENT_BIN / SIM_BIN (debug builds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CLOUD_BIN:-../../target/debug/dmr-cloud}
[ -x "$BIN" ] || { echo "dmr-cloud binary not found at $BIN (set CLOUD_BIN)"; exit 2; }
[ -f dist/index.html ] || { echo "run npm run build first"; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
CLOUD_PORT=$(free_port)
WEB_PORT=$(free_port)
MQTT_PORT=$(free_port)
export E2E_WORK=$WORK AGENT_BIN=${AGENT_BIN:-$PWD/../../target/debug/dmr-agent} SIM_BIN=${SIM_BIN:-$PWD/../../target/debug/dmr-lock-sim}
export E2E_LINK_UP=${E2E_LINK_UP:-$PWD/scripts/e2e-link-up.sh}
# A master key for the throwaway cloud's signing keys, and its embedded broker on a free port
# (the gateway is told that URL at enrollment).
DMR_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export DMR_MASTER_KEY DMR_MQTT_EMBEDDED_LISTEN=127.0.0.1:$MQTT_PORT DMR_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT \
  DMR_GATEWAY_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
export DMR_SERVER_LISTEN=127.0.0.1:$CLOUD_PORT DMR_SERVER_PUBLIC_BASE_URL=http://127.0.0.1:$WEB_PORT \
  DMR_DATABASE_URL="sqlite://$WORK/dmr.db?mode=rwc"
if [ "${E2E_ORDERS:-}" = 1 ]; then
  # Short order timers so the no-gateway path (unlock timeout, then the automatic refund
  # after its grace period) finishes within the walk-through.
  export DMR_ORDERS_UNLOCK_TIMEOUT_SECS=${DMR_ORDERS_UNLOCK_TIMEOUT_SECS:-10} DMR_ORDERS_REFUND_GRACE_SECS=${DMR_ORDERS_REFUND_GRACE_SECS:-3}
fi
# A throwaway firmware vendor key: the cloud trusts its public half, e2e.mjs signs with it.
eval "$(node -e "
const c = require('node:crypto')
const { publicKey, privateKey } = c.generateKeyPairSync('ed25519')
console.log('export E2E_FW_KEY_ID=7 E2E_FW_KEY=' + privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64') +
  ' DMR_FIRMWARE_VENDOR_KEYS=7:' + publicKey.export({ format: 'jwk' }).x)
")"
PASSWORD="e2e-admin-$RANDOM-$RANDOM"
echo "$PASSWORD" | "$BIN" admin create-user --username e2e-ops --display-name E2E >/dev/null
"$BIN" serve >"$WORK/cloud.log" 2>&1 &
CLOUD_PID=$!
DMR_CLOUD_URL=http://127.0.0.1:$CLOUD_PORT node_modules/.bin/vite preview --host 127.0.0.1 --port "$WEB_PORT" --strictPort >"$WORK/web.log" 2>&1 &
WEB_PID=$!
trap 'kill $CLOUD_PID $WEB_PID $(cat "$WORK/link.pids" 2>/dev/null) 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${E2E_KEEP:-}" ] && echo "cloud log kept in $WORK" || rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$WEB_PORT/health" && break
  sleep 0.1
done
export E2E_SHOTS=${E2E_SHOTS:-$PWD/e2e-shots/$(date -u +%Y%m%dT%H%M%SZ)}
E2E_BASE=http://127.0.0.1:$WEB_PORT E2E_ADMIN=e2e-ops E2E_ADMIN_PASSWORD=$PASSWORD node scripts/e2e.mjs
