#!/usr/bin/env bash
# Token verification benchmark (issue: wire-contract crate): runs the criterion bench, then prints
# the median time of each side and the rate ratio verify_text / bare verify_strict.
#   scripts/bench-token.sh [ROUNDS]   (default 3 rounds; each round measures both side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
for r in $(seq "$rounds"); do
  cargo bench -q -p dmr-protocol --bench token_verify -- --warm-up-time 1 --measurement-time 5 >/dev/null 2>&1
  python3 - "$r" <<'PY'
import json, sys
d = "target/criterion/token_verify"
m = {n: json.load(open(f"{d}/{n}/new/estimates.json"))["median"]["point_estimate"] / 1000
     for n in ("bare_verify_strict", "verify_text")}
print(f"round {sys.argv[1]}: bare verify_strict median {m['bare_verify_strict']:.2f} us, "
      f"verify_text median {m['verify_text']:.2f} us, "
      f"rate ratio {m['bare_verify_strict'] / m['verify_text']:.3f}")
PY
done
