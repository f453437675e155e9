#!/usr/bin/env bash
# Side-by-side runs of the order flow bench (issue 6, docs/benchmarks.md "Orders online flow"):
# two builds, or one build under two settings, in interleaved single rounds, then the median
# of every figure per side and rate. The machines are shared and noisy, so a before/after that
# runs one side's rounds after the other's mostly measures the minute it ran in; interleaving
# gives both sides the same minutes.
#
#   scripts/bench-flow-ab.sh sqlite|pg RATES ROUNDS DIR_A [DIR_B]
#
# DIR_A and DIR_B each hold order_flow (the bench binary: `cargo bench -p dmr-cloud --bench
# order_flow --no-run` prints its path), dmr-agent and dmr-lock-sim (`cargo build --profile
# bench -p dmr-edge-agent -p dmr-firmware-sim`, in target/release). Without DIR_B both sides
# run DIR_A and differ by environment only: A_ENV and B_ENV (e.g. B_ENV="DMR_FLOW_MQTT_WORKERS=1").
# The sizing is the one the session 7 and 8 figures used (12 gateways × 48 locks, door open
# 300 ms, 2 s warm-up, 8 s measured); DMR_FLOW_* in the environment override it. PostgreSQL
# runs durable (DMR_PG_DURABLE=1, scripts/run_postgres.sh) unless DMR_PG_DURABLE=0. Each round's
# whole output is kept in OUT (default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 64
fi
backend=$1 rates=$2 rounds=$3
dir_a=$(cd "$4" && pwd)
dir_b=$(cd "${5:-$4}" && pwd)
case "$backend" in sqlite | pg) ;; *)
  echo "backend must be sqlite or pg, not '$backend'" >&2
  exit 64
  ;;
esac
for d in "$dir_a" "$dir_b"; do
  for f in order_flow dmr-agent dmr-lock-sim; do
    [ -x "$d/$f" ] || {
      echo "$d/$f is missing or not executable (see the header of $0)" >&2
      exit 66
    }
  done
done
out=${OUT:-$(mktemp -d -t flow-ab.XXXXXX)}
mkdir -p "$out"

export DMR_FLOW_GATEWAYS=${DMR_FLOW_GATEWAYS:-12} DMR_FLOW_LOCKS=${DMR_FLOW_LOCKS:-48} \
  DMR_FLOW_SECS=${DMR_FLOW_SECS:-8} DMR_FLOW_WARMUP_SECS=${DMR_FLOW_WARMUP_SECS:-2} \
  DMR_FLOW_DOOR_OPEN_MS=${DMR_FLOW_DOOR_OPEN_MS:-300} DMR_FLOW_RATES=$rates DMR_FLOW_RUNS=1

# One round of one side: its binaries, its extra environment, its output file.
round() {
  local dir=$1 extra=$2 file=$3
  if [ "$backend" = pg ]; then
    # A durable server unless the caller says otherwise: the figures stand for production.
    (cd cloud && env DMR_PG_DURABLE="${DMR_PG_DURABLE:-1}" $extra DMR_E2E_BIN_DIR="$dir" \
      DMR_FLOW_ONLY_PG=1 BENCH="$dir/order_flow" \
      ../scripts/run_postgres.sh sh -c 'DMR_TEST_DATABASE_URL=$DATABASE_URL "$BENCH" --bench') \
      >"$file" 2>&1
  else
    (cd cloud && env $extra DMR_E2E_BIN_DIR="$dir" "$dir/order_flow" --bench) >"$file" 2>&1
  fi
}

for r in $(seq "$rounds"); do
  for side in A B; do
    if [ $side = A ]; then dir=$dir_a extra=${A_ENV:-}; else dir=$dir_b extra=${B_ENV:-}; fi
    echo "round $r, side $side: $(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg)" >&2
    round "$dir" "$extra" "$out/$side-$r.txt" || {
      echo "side $side, round $r failed; its output is $out/$side-$r.txt" >&2
      exit 1
    }
  done
done

python3 - "$out" "$rounds" <<'PY'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
cols = ["achieved/s", "p50 ms", "p95 ms", "p99 ms", "create p99 ms", "pay p99 ms"]
def parse(path):
    rows, writer = {}, []
    for line in open(path):
        m = re.match(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[int(m.group(1))] = [float(x) for x in m.groups()[1:]]
        w = re.search(r"writer connection checked out ([\d.]+)% of the time, ([\d.]+) ms per flow", line)
        if w:
            writer.append(float(w.group(2)))
    # The writer lines come one per rate, in the order of the table's rows.
    for rate, ms in zip(sorted(rows), writer):
        rows[rate].append(ms)
    return rows
sides = {s: [parse(f"{out}/{s}-{r}.txt") for r in range(1, rounds + 1)] for s in "AB"}
rates = sorted(sides["A"][0])
has_writer = all(len(sides[s][0][rate]) > len(cols) for s in "AB" for rate in rates)
head = cols + (["writer ms/flow"] if has_writer else [])
print(f"medians of {rounds} interleaved round(s); outputs in {out}")
print("| side | offered/s | " + " | ".join(head) + " |")
print("|---|---|" + "---|" * len(head))
for rate in rates:
    for s in "AB":
        vals = [statistics.median(r[rate][i] for r in sides[s]) for i in range(len(head))]
        print(f"| {s} | {rate} | " + " | ".join(f"{v:.1f}" if i < len(cols) else f"{v:.2f}" for i, v in enumerate(vals)) + " |")
PY
