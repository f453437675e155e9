#!/usr/bin/env bash
# Runs the whole system on embedded defaults with nothing to configure:
#   - dmr-cloud on SQLite with its embedded MQTT broker, the console (/) and the phone pages
#     (/h5/) built from cloud/web, and a platform admin login;
#   - a demo merchant, venue, gateway and four locks with price plans, seeded through the API
#     (scripts/demo_seed.py), with owner and staff logins;
#   - dmr-lock-sim: a simulated RS-485 bus of four lock controllers on a pty;
#   - dmr-agent, enrolled with a one-time code on first start, driving that bus.
# State lives under target/demo/ (DMR_RUN_DIR) and survives restarts. Ctrl-C stops everything.
# Ports: DMR_DEMO_PORT (HTTP, 8080), DMR_DEMO_MQTT_PORT (1883), DMR_DEMO_AGENT_PORT (8480,
# the gateway's LAN unlock API; status on the next port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --minimal
RUN_DIR=${DMR_RUN_DIR:-$PWD/target/demo}
PORT=${DMR_DEMO_PORT:-8080}
MQTT_PORT=${DMR_DEMO_MQTT_PORT:-1883}
AGENT_PORT=${DMR_DEMO_AGENT_PORT:-8480}
mkdir -p "$RUN_DIR"

echo "== building the console and phone pages (npm)"
( cd cloud/web && npm ci --no-audit --no-fund --loglevel=error && npm run build >/dev/null )
echo "== building the binaries (release; the first build takes a few minutes)"
cargo build --locked --release -p dmr-cloud -p dmr-firmware-sim -p dmr-edge-agent

export DMR_DATABASE_URL="sqlite://$RUN_DIR/cloud.db"
# The master key that encrypts the cloud's signing keys: made once per demo directory.
if [ -z "${DMR_MASTER_KEY:-}" ]; then
  [ -s "$RUN_DIR/master.key" ] || (umask 077 && head -c 32 /dev/urandom | base64 > "$RUN_DIR/master.key")
  DMR_MASTER_KEY=$(cat "$RUN_DIR/master.key")
  export DMR_MASTER_KEY
fi
export DMR_SERVER_LISTEN="127.0.0.1:$PORT" DMR_SERVER_PUBLIC_BASE_URL="http://127.0.0.1:$PORT"
export DMR_SERVER_WEB_DIR="$PWD/cloud/web/dist" DMR_LOG_FORMAT=${DMR_LOG_FORMAT:-pretty}
export DMR_MQTT_EMBEDDED_LISTEN="127.0.0.1:$MQTT_PORT" DMR_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
export DMR_GATEWAY_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
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

ready=
for _ in $(seq 150); do
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && grep -q READY "$RUN_DIR/sim.out"; then
    ready=1; break
  fi
  sleep 0.2
done
[ -n "$ready" ] || { echo "the cloud or the simulator did not start; see $RUN_DIR/*.log" >&2; exit 1; }
control=$(sed -n 's/^CONTROL //p' "$RUN_DIR/sim.out")

echo "== seeding the demo merchant (first run only)"
python3 scripts/demo_seed.py "http://127.0.0.1:$PORT" "$PASSWORD_FILE" "$RUN_DIR/demo.json"

# The gateway: its configuration names only what is local (state, the bus, its LAN API);
# identity, trusted keys, MQTT credentials and the lock map come from enrollment.
cat > "$RUN_DIR/agent.toml" <<TOML
state_dir = "$RUN_DIR/agent"
heartbeat_interval_s = 10
sync_interval_s = 30
[http]
listen = "127.0.0.1:$AGENT_PORT"
status_listen = "127.0.0.1:$((AGENT_PORT + 1))"
[[bus]]
port = "$RUN_DIR/ttyLOCKS"
baud = 9600
TOML
if [ ! -s "$RUN_DIR/agent/enrollment.json" ]; then
  echo "== enrolling the gateway"
  code=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["enrollment_code"])' "$RUN_DIR/demo.json")
  target/release/dmr-agent enroll --config "$RUN_DIR/agent.toml" --cloud "http://127.0.0.1:$PORT" \
    --code "$code" --name "Demo gateway" 2>> "$RUN_DIR/agent.log"
fi
DMR_LOG_FORMAT=pretty target/release/dmr-agent run --config "$RUN_DIR/agent.toml" 2>> "$RUN_DIR/agent.log" &
pids+=($!)

python3 - "$RUN_DIR/demo.json" "$PASSWORD_FILE" "$PORT" "$control" "$RUN_DIR" "$AGENT_PORT" <<'PY'
import json, sys
demo, admin_pw, port, control, run_dir, agent_port = sys.argv[1:]
d = json.load(open(demo))
base = f"http://127.0.0.1:{port}"
print(f"""
Dumeiren is running (logs in {run_dir}):
  Console (Chinese by default, English in the menu):  {base}/
  Logins:  admin / {open(admin_pw).read().strip()}   (platform admin)
           demo-owner / {d['logins']['demo-owner']}   (merchant owner)
           demo-staff / {d['logins']['demo-staff']}   (merchant staff)
  Phone pages (what each lock's QR code opens; the sandbox plays the payer):""")
for lock in d["locks"]:
    print(f"    {lock['name']:<8} {lock['qr_payload']}")
print(f"""  Gateway: dmr-agent, LAN unlock API http://127.0.0.1:{agent_port}/v1/unlock,
           status: target/release/dmr-agent status --config {run_dir}/agent.toml
  Simulated lock bus (4 locks): pty {run_dir}/ttyLOCKS, control {control}/locks
Ctrl-C stops everything.""")
PY
wait -n "${pids[@]}"
echo "a component stopped; see $RUN_DIR/*.log" >&2
