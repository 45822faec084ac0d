#!/usr/bin/env bash
# mnemo drift vs river on one JSON Lines stream, end to end, one run (see bench/drift.md).
# Usage: bench/drift.sh [--lines N]
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/venv.sh)
cargo build --release -q
"$py" bench/drift.py --mnemo target/release/mnemo --out target/bench-drift "$@"
