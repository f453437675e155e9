#!/usr/bin/env bash
# Runs the system as far as it exists (see README.md): builds the workspace, then checks the
# wire-contract library against the bundled independent test vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --minimal
cargo build --locked --workspace --release
cargo test --locked -q -p dmr-protocol --test vectors
echo "dmr-protocol: conformance vectors pass. Services are added to this command as their issues land."
