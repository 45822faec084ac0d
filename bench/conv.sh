#!/usr/bin/env bash
# mnemo's host conv2d (src/model/conv.rs) against candle's conv2d and PyTorch, in one run on
# the same tensors and weights: per-layer forward+backward at EfficientNet-B0 shapes, then
# training steps/s of efficientnet_b0 and of the CNN fixture (see bench/conv.md).
# Usage: bench/conv.sh [--before REV] [conv.py options: --reps N --steps N --epochs N --skip a,b,c]
#   --before REV  also train with mnemo built from git revision REV (candle's conv2d, e.g. the
#                 commit before src/model/conv.rs) for the "before" columns.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/venv.sh)
out=target/bench-conv
mkdir -p "$out"
before=()
if [[ "${1:-}" == "--before" ]]; then
    rev=$2
    shift 2
    # Built from an export in the same target directory (dependencies are reused). Cargo
    # names the crate's artifacts alike for both trees and goes by file times, so each tree's
    # sources are touched before its build; its binary replaces target/release/mnemo, so the
    # current tree is built after it.
    rm -rf "$out/before-src" && mkdir -p "$out/before-src"
    git archive "$rev" | tar -x -C "$out/before-src"
    find "$out/before-src/src" -name '*.rs' -exec touch {} +
    (cd "$out/before-src" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release -q --bin mnemo)
    cp target/release/mnemo "$out/mnemo-before"
    before=(--before "$out/mnemo-before")
    touch src/lib.rs
fi
cargo build --release -q --bin mnemo --example conv_bench
"$py" bench/conv.py --mnemo target/release/mnemo --conv-bench target/release/examples/conv_bench \
    --out "$out" "${before[@]}" "$@"
