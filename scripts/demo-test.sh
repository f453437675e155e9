#!/usr/bin/env bash
# The README's run command, tested as a newcomer would use it: start `scripts/run.sh` in a
# fresh directory on free ports, wait for its banner, then, through the public API only,
# open a lock's phone page, create an order, pay in the sandbox, and watch the order reach
# `unlocked` while the simulated lock really actuates (its `actuations` counter, read from the
# simulator's control API, goes up). Opening and closing the door then completes the order.
# Last, Ctrl-C (SIGINT) must stop every process the demo started.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=$(mktemp -d /tmp/dmr-demo-test.XXXXXX)
# Ports below the ephemeral range, all from one call (scripts/free_ports.py says why). The
# agent's status listener takes the port after the LAN API, so the fourth pick must be the
# third plus one (usually so: that shows it is free too); otherwise pick again.
for _ in $(seq 50); do
  read -r DMR_DEMO_PORT DMR_DEMO_MQTT_PORT DMR_DEMO_AGENT_PORT next <<<"$(python3 scripts/free_ports.py 4)"
  [ -n "$next" ] && [ "$next" = $((DMR_DEMO_AGENT_PORT + 1)) ] && break
done
[ -n "$next" ] && [ "$next" = $((DMR_DEMO_AGENT_PORT + 1)) ] || { echo "demo test: no free ports" >&2; exit 1; }
export DMR_RUN_DIR=$RUN_DIR DMR_DEMO_PORT DMR_DEMO_MQTT_PORT DMR_DEMO_AGENT_PORT

# Job control gives the demo its own process group, as a terminal would, and keeps SIGINT
# deliverable (a non-interactive shell's background jobs would ignore it).
set -m
scripts/run.sh > "$RUN_DIR/run.out" 2>&1 &
RUN_PID=$!
set +m
cleanup() {
  kill -INT -- "-$RUN_PID" 2>/dev/null || true
  sleep 2
  kill -KILL -- "-$RUN_PID" 2>/dev/null || true
}
trap cleanup EXIT

# The first run builds release binaries and the web pages: allow for it.
for _ in $(seq 1800); do
  grep -q "Ctrl-C stops everything" "$RUN_DIR/run.out" && break
  if ! kill -0 "$RUN_PID" 2>/dev/null; then
    echo "demo test: scripts/run.sh exited early:" >&2; tail -40 "$RUN_DIR/run.out" >&2; exit 1
  fi
  sleep 1
done
grep -q "Ctrl-C stops everything" "$RUN_DIR/run.out" || { echo "demo test: no banner after 30 min" >&2; exit 1; }

python3 - "$RUN_DIR" "$DMR_DEMO_PORT" <<'PY'
import json, re, sys, time, urllib.request, uuid
run_dir, port = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
banner = open(f"{run_dir}/run.out", encoding="utf-8").read()
control = re.search(r"control (http://\S+)/locks", banner).group(1)
demo = json.load(open(f"{run_dir}/demo.json"))

def call(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=15) as r:
        raw = r.read()
        return json.loads(raw) if raw and r.headers.get_content_type() == "application/json" else raw

def wait(what, pred, secs):
    end = time.time() + secs
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    sys.exit(f"demo test: timed out waiting for {what}")

lock = demo["locks"][0]
addr = lock["addr"]
# The printed QR code leads to the phone page.
with urllib.request.urlopen(lock["qr_payload"], timeout=15) as r:
    assert "/h5/" in r.geturl(), r.geturl()
info = wait("the lock to be online (gateway heartbeat)",
            lambda: (lambda i: i if i["status"] == "online" else None)(
                call("GET", f"{base}/api/v1/public/locks/{lock['qr_code']}")), 90)
plan = info["price_plans"][0]
before = call("GET", f"{control}/locks/{addr}")["actuations"]
session = str(uuid.uuid4())
created = call("POST", f"{base}/api/v1/public/orders",
               {"qr_code": lock["qr_code"], "plan_id": plan["id"], "provider": "sandbox"},
               {"Idempotency-Key": str(uuid.uuid4()), "X-Device-Session": session})
order, key = created["order"], created["access_key"]
assert order["amount_fen"] == plan["price_fen"], order
call("POST", created["payment"]["redirect_url"])  # the payer confirms in the sandbox
done = wait("the order to be unlocked",
            lambda: (lambda o: o if o["status"] in ("unlocked", "completed", "unlock_failed", "refunded") else None)(
                call("GET", f"{base}/api/v1/public/orders/{order['id']}?key={key}")), 60)
assert done["status"] in ("unlocked", "completed"), done
after = wait("the simulated latch to move",
             lambda: (lambda n: n if n > before else None)(call("GET", f"{control}/locks/{addr}")["actuations"]), 20)
print(f"demo test: order {order['id']} {done['status']}; lock {addr} actuations {before} -> {after}")
# The person opens the door and closes it again: the order completes.
call("POST", f"{control}/locks/{addr}/door", {"open": True})
time.sleep(1.5)
call("POST", f"{control}/locks/{addr}/door", {"open": False})
wait("the order to complete", lambda: call("GET", f"{base}/api/v1/public/orders/{order['id']}?key={key}")["status"] == "completed", 30)
print("demo test: order completed from the door events")
PY

# Ctrl-C stops everything: SIGINT to the demo's process group, as a terminal sends it.
kill -INT -- "-$RUN_PID"
for _ in $(seq 40); do pgrep -g "$RUN_PID" >/dev/null || break; sleep 0.5; done
if pgrep -g "$RUN_PID" >/dev/null; then
  echo "demo test: processes still running 20 s after Ctrl-C:" >&2; pgrep -a -g "$RUN_PID" >&2; exit 1
fi
trap - EXIT
rm -rf "$RUN_DIR"
echo "demo test: passed"
