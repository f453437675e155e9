#!/usr/bin/env bash
# Runs every test of the project on a fresh machine of its kind (Debian 12, root, Rust via rustup):
# installs what is missing, then format and lint checks, the whole workspace test suite (cloud
# tests against SQLite and a throwaway PostgreSQL), and the aarch64 cross build with the
# protocol tests under qemu-user; the web pages end to end in Chromium, and the demo itself.
# `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

# CI builds once from a clean tree: incremental caches would only add gigabytes to a disk that
# is often small (a CI run once ran out of it while linking the test binaries).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test (SQLite and PostgreSQL)"
# The end-to-end tests run the real dmr-agent and dmr-lock-sim binaries: build them first
# (cargo holds its build lock while tests run, so a test cannot build them itself).
cargo build --locked -p dmr-edge-agent -p dmr-firmware-sim --bins
export DMR_PYMODBUS_PYTHON=${DMR_PYMODBUS_PYTHON:-$PWD/target/pyvenv/bin/python}
# The cloud suite runs on both databases: run_postgres.sh starts a throwaway server and exports
# DATABASE_URL; it is handed to the tests as DMR_TEST_DATABASE_URL (and DATABASE_URL itself is
# dropped so nothing else connects to it by accident). DMR_REQUIRE_PG makes a missing server fail.
scripts/run_postgres.sh bash -c \
  'env -u DATABASE_URL DMR_TEST_DATABASE_URL="$DATABASE_URL" DMR_REQUIRE_PG=1 cargo test --locked --workspace'

step "web: console and H5 pages (type check, unit tests, build, bundle size)"
# Node 20 and npm come with the machine; packages come from the npm registry by package-lock.json.
( cd cloud/web && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run build && npm run size )

step "web end to end: headless Chromium against dmr-cloud, dmr-agent and dmr-lock-sim"
( cd cloud/web && E2E_ORDERS=1 E2E_LINK=1 E2E_REQUIRE_FULL=1 scripts/e2e.sh )

step "systemd units (systemd-analyze verify + security)"
# verify needs an executable at ExecStart: point it at the freshly built binaries.
scripts/verify_unit.sh systemd/dmr-agent.service "$PWD/target/debug/dmr-agent"
scripts/verify_unit.sh systemd/dmr-cloud.service "$PWD/target/debug/dmr-cloud"

step "operations examples (promtool check/test rules, nginx -t)"
scripts/check-ops-configs.sh

step "the demo (scripts/run.sh): pay for an unlock through the public API"
scripts/demo-test.sh

step "aarch64 cross build and tests under qemu"
scripts/cross-test.sh aarch64

step "all tests passed"
# Disk used by the build, so a CI log shows how close a run came to the machine's limit.
du -sh target 2>/dev/null || true
df -h . | tail -1
