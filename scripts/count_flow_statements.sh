#!/usr/bin/env bash
# Counts the SQL statements one order flow costs (issue 6, docs/benchmarks.md "Orders online
# flow"): a throwaway PostgreSQL with log_statement = all, the order_flow bench at a low rate,
# then every statement the server logged, minus the bench's own monitor and seeding, divided by
# the orders created. Prints the total per flow and the statements by kind.
#
#   scripts/count_flow_statements.sh [BIN_DIR]
#
# BIN_DIR holds dmr-agent, dmr-lock-sim and order_flow (the bench binary) to count a given
# build; without it the bench-profile build of this checkout is used (built if needed). Needs
# what the bench needs (mosquitto, PostgreSQL 15 via scripts/run_postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ $# -ge 1 ]; then
  bin_dir=$(cd "$1" && pwd)
  bench="$bin_dir/order_flow"
else
  cargo build --profile bench -p dmr-edge-agent -p dmr-firmware-sim >&2
  bench=$(cargo bench -p dmr-cloud --bench order_flow --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="order_flow":
        print(m["executable"])' | tail -1)
  bin_dir=$(cd "$(dirname "$bench")/.." && pwd)
fi
export OUT="$out" BENCH="$bench" BIN_DIR="$bin_dir"
(cd cloud && ../scripts/run_postgres.sh bash -c '
  psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "ALTER SYSTEM SET log_statement = '"'"'all'"'"'" \
    -c "SELECT pg_reload_conf()" >/dev/null
  DMR_TEST_DATABASE_URL=$DATABASE_URL DMR_FLOW_ONLY_PG=1 DMR_FLOW_RATES=50 DMR_FLOW_RUNS=1 \
    DMR_FLOW_SECS=7 DMR_FLOW_WARMUP_SECS=1 DMR_FLOW_GATEWAYS=4 DMR_FLOW_LOCKS=48 \
    DMR_E2E_BIN_DIR="$BIN_DIR" "$BENCH" --bench > "$OUT/bench.out" 2>&1
  cp "$PGHOST_SOCKET/server.log" "$OUT/server.log"') >/dev/null 2>&1 || {
  echo "the bench run failed; its output:" >&2
  cat "$out/bench.out" >&2 2>/dev/null || true
  exit 1
}
python3 - "$out/server.log" <<'PY'
import collections, re, sys
# The bench's own queries (its monitor of active orders, its stage timings and its seeding).
BENCH = ("SELECT id, status, unlocked_at FROM orders WHERE status IN",
         "SELECT status, unlocked_at FROM orders WHERE id",
         "SELECT latency_ms FROM gateway_command_acks",
         "SELECT created_at, paid_at, unlocking_at, unlocked_at, unlock_command_id FROM orders",
         "INSERT INTO price_plans", "INSERT INTO locks", "INSERT INTO gateways",
         "SELECT COUNT(*) FROM locks WHERE status = 'online'")
kinds = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"LOG:  (?:execute [^:]*|statement): (.*)$", line)
    if not m:
        continue
    sql = re.sub(r"\s+", " ", m.group(1)).strip()
    if sql.startswith(BENCH):
        continue
    sql = re.sub(r"\$\d+", "$", sql)
    kinds[sql[:90]] += 1
orders = sum(v for k, v in kinds.items() if k.startswith("INSERT INTO orders "))
if not orders:
    sys.exit("no orders were created; see the bench output")
print(f"{orders} orders, {sum(kinds.values()) / orders:.1f} statements per flow")
for k, v in kinds.most_common():
    if v / orders >= 0.05:
        print(f"{v / orders:6.2f}  {k}")
PY
