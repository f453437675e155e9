#!/bin/bash
# Idle CPU of G dmr-agent + dmr-lock-sim pairs (M locks each, no cloud, a local Mosquitto):
# cores busy and CPU µs per bus exchange for agents and simulators over SECS seconds, rounds from
# each agent's /status. Used for docs/benchmarks.md ("flowagent (session 5)").
# usage: scripts/bench_gateway_idle.sh BIN_DIR GATEWAYS LOCKS POLL_MS [SECS]   (PERF=1: perf record
# one agent and one simulator afterwards; EXTRA_CONF: extra top-level agent config lines)
# Needs mosquitto, python3, curl, bc; bench-profile binaries in BIN_DIR.
set -u
BIN=$1; G=$2; M=$3; POLL=$4; SECS=${5:-10}
D=$(mktemp -d ${TMPDIR:-/tmp}/gw-idle.XXXX)
PORT=$((20000 + RANDOM % 20000))
printf "listener $PORT 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n" > $D/m.conf
mosquitto -c $D/m.conf >/dev/null 2>&1 & MP=$!
PIDS_A=(); PIDS_S=()
python3 - $D $G $M > /dev/null <<'PY'
import sys,uuid,os,base64
d,g,m=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
for n in range(g):
    open(f"{d}/gw{n}.id","w").write(str(uuid.uuid4()))
    open(f"{d}/locks{n}","w").write(", ".join(f'{{ addr = {a}, lock_id = "{uuid.uuid4()}" }}' for a in range(1,m+1)))
PY
for n in $(seq 0 $((G-1))); do
  $BIN/dmr-lock-sim --locks $M --link $D/tty$n --door auto --door-open-after-ms 30 --door-close-after-ms 1000 >/dev/null 2>&1 & PIDS_S+=($!)
done
for n in $(seq 0 $((G-1))); do
  while [ ! -e $D/tty$n ]; do sleep 0.05; done
  mkdir -p $D/agent$n
  cat > $D/agent$n.toml <<T
gateway_id = "$(cat $D/gw$n.id)"
state_dir = "$D/agent$n"
key_file = "$D/gw$n.key"
poll_interval_ms = $POLL
offline_after = 3
unlock_timeout_ms = 3000
heartbeat_interval_s = 2
${EXTRA_CONF:-}
[trusted_keys]
"1" = "$(python3 -c 'import base64;print(base64.urlsafe_b64encode(bytes(32)).decode().rstrip("="))')"

[http]
listen = "127.0.0.1:0"
status_listen = "127.0.0.1:$((PORT+1+n))"

[mqtt]
url = "mqtt://127.0.0.1:$PORT"
keep_alive_s = 30
reconnect_min_ms = 100
reconnect_max_ms = 1000

[[bus]]
port = "$D/tty$n"
baud = 115200
locks = [ $(cat $D/locks$n) ]
T
  $BIN/dmr-agent keygen --config $D/agent$n.toml >/dev/null 2>&1
  RUST_LOG=warn $BIN/dmr-agent run --config $D/agent$n.toml >/dev/null 2>$D/agent$n.log & PIDS_A+=($!)
done
sleep 3
rounds() { local t=0; for n in $(seq 0 $((G-1))); do r=$(curl -s 127.0.0.1:$((PORT+1+n))/status | python3 -c "import json,sys; print(sum(b[\"rounds\"] for b in json.load(sys.stdin)[\"poll_rounds\"]))"); t=$((t+${r:-0})); done; echo $t; }
cpu() { local t=0; for p in "$@"; do s=$(cut -d')' -f2 /proc/$p/stat 2>/dev/null | awk '{print $12+$13}'); t=$((t+${s:-0})); done; echo $t; }
r0=$(rounds); a0=$(cpu ${PIDS_A[@]}); s0=$(cpu ${PIDS_S[@]}); t0=$(date +%s.%N)
sleep $SECS
a1=$(cpu ${PIDS_A[@]}); r1=$(rounds); s1=$(cpu ${PIDS_S[@]}); t1=$(date +%s.%N)
echo "$BIN G=$G M=$M poll=$POLL ${EXTRA_CONF:-}: agents $(echo "scale=3;($a1-$a0)/100/($t1-$t0)"|bc) cores, sims $(echo "scale=3;($s1-$s0)/100/($t1-$t0)"|bc) cores, rounds/s $(echo "scale=1;($r1-$r0)/($t1-$t0)"|bc), agent us/exchange $(echo "scale=1;($a1-$a0)*10000/(($r1-$r0)*$M)"|bc), sim us/exchange $(echo "scale=1;($s1-$s0)*10000/(($r1-$r0)*$M)"|bc), load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${PERF:-}" ]; then echo "agent pid ${PIDS_A[0]} sim pid ${PIDS_S[0]}"; perf record -g -o $D/agent.perf -p ${PIDS_A[0]} -- sleep 5 2>/dev/null >/dev/null; perf record -g -o $D/sim.perf -p ${PIDS_S[0]} -- sleep 5 >/dev/null 2>&1; echo "perf in $D"; fi
grep -i -m3 "error\|warn" $D/agent0.log | cut -c1-300
kill ${PIDS_A[@]} 2>/dev/null; sleep 0.5; kill ${PIDS_S[@]} $MP 2>/dev/null; wait 2>/dev/null
[ -z "${PERF:-}" ] && rm -rf $D
