#!/usr/bin/env bash
# Online learning, one example at a time with an EMA: `mnemo data stream | mnemo online` against
# the PyTorch loop a user writes (bench/online.py: eval-mode score, one SGD step, AveragedModel
# update per example), on N real MNIST training images (make mnist), MLP 784-256-10, SGD 0.05,
# EMA 0.99; alternated, ROUNDS times; examples/s. mnemo's figure is the whole pipe's wall time
# (process start, stream framing and parsing, checkpoints every 1,000 examples included);
# torch's is its loop alone (imports, data loading and model construction left out).
# Prints uptime before and after: a ratio taken under load is not a result.
#   bash bench/online.sh            # needs target/release/mnemo, data/mnist and the torch venv
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
MNEMO=${MNEMO:-$root/target/release/mnemo}
ROUNDS=${ROUNDS:-3}
N=${N:-10000}
DATA=${DATA:-$root/data/mnist/train.safetensors}
py="$("$root/scripts/venv.sh")"
w="$(mktemp -d)"; trap 'rm -rf "$w"' EXIT
"$MNEMO" data take "$DATA" "$N" -o "$w/d.st" >/dev/null
"$MNEMO" init --arch mlp:784-256-10 --seed 1 -o "$w/m0.st" >/dev/null
mn() {
  local s e
  s=$(date +%s.%N)
  "$MNEMO" data stream "$w/d.st" | "$MNEMO" online "$w/m0.st" --data - --optimizer sgd --lr 0.05 \
    --ema "$w/ema.st" --ema-decay 0.99 -o "$w/live.st" --every "$N" -q > "$w/rec.jsonl"
  e=$(date +%s.%N)
  echo "$s $e" | awk '{printf "%.4f", $2 - $1}'
}
echo "uptime before: $(uptime)"
for r in $(seq "$ROUNDS"); do
  a=$(mn)
  acc=$(sed 's/.*"accuracy":\([^,]*\),.*/\1/' "$w/rec.jsonl")
  read -r t tacc < <("$py" "$root/bench/online.py" "$w/d.st" "$w/m0.st" "$N")
  awk -v r="$r" -v a="$a" -v t="$t" -v n="$N" -v acc="$acc" -v tacc="$tacc" 'BEGIN {
    printf "round %d: mnemo %.0f examples/s (prequential accuracy %.4f), torch %.0f examples/s (%.4f); mnemo/torch %.2fx\n",
      r, n / a, acc, n / t, tacc, t / a }'
done
echo "uptime after: $(uptime)"
