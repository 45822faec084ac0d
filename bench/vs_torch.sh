#!/usr/bin/env bash
# mnemo vs PyTorch, side by side on the same data and weights, in one run:
# training steps/s (MLP 784-400-400-10 with AdamW, with and without an EWC
# penalty; the CNN fixture's architecture), and the exact empirical Fisher
# against the per-example loop a PyTorch user would write.
# Usage: bench/vs_torch.sh [--epochs N]   (prints a Markdown table; see bench/vs_torch.md)
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/venv.sh)
cargo build --release -q
"$py" bench/vs_torch.py --mnemo target/release/mnemo --out target/bench-torch "$@"
