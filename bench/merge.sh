#!/usr/bin/env bash
# Linear merge of three bf16 checkpoints (1 GiB each by default): mnemo vs PyTorch vs
# mergekit vs the I/O limit, wall time and peak RSS, one run. Needs ~5 GiB free in target/.
# Usage: bench/merge.sh [--gib G] [--skip-mergekit]   (see bench/merge.md)
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/venv.sh)
cargo build --release -q
"$py" bench/merge.py --mnemo target/release/mnemo --out target/bench-merge "$@"
