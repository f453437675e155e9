#!/usr/bin/env bash
# E2E_LINK_UP default (called by scripts/e2e.mjs): attaches a real gateway to the cloud under
# test. Starts dmr-lock-sim with one lock at LOCK_BUS_ADDRESS on a pty, enrolls dmr-agent with
# ENROLL_CODE against CLOUD_URL, and starts the agent. Both run in the background; their pids
# go to $E2E_WORK/link.pids so e2e.sh stops them with the cloud.
set -euo pipefail
: "${ENROLL_CODE:?}" "${LOCK_BUS_ADDRESS:?}" "${CLOUD_URL:?}" "${E2E_WORK:?}" "${AGENT_BIN:?}" "${SIM_BIN:?}"
dir="$E2E_WORK/gateway"
mkdir -p "$dir"
"$SIM_BIN" --lock "$LOCK_BUS_ADDRESS" --link "$dir/ttyLOCK" --control 127.0.0.1:0 > "$dir/sim.out" 2> "$dir/sim.log" &
echo $! >> "$E2E_WORK/link.pids"
for _ in $(seq 100); do grep -q READY "$dir/sim.out" && break; sleep 0.1; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat > "$dir/agent.toml" <<TOML
state_dir = "$dir/state"
heartbeat_interval_s = 5
[http]
status_listen = "127.0.0.1:$(free_port)"
[[bus]]
port = "$dir/ttyLOCK"
baud = 9600
TOML
"$AGENT_BIN" enroll --config "$dir/agent.toml" --cloud "$CLOUD_URL" --code "$ENROLL_CODE" --name "E2E gateway"
"$AGENT_BIN" run --config "$dir/agent.toml" 2> "$dir/agent.log" &
echo $! >> "$E2E_WORK/link.pids"
