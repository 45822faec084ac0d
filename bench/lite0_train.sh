#!/usr/bin/env bash
# Lite0 multi-task (seg head) training at 64 px, batch 32, Adam: mnemo against PyTorch 2.15
# (channels-first and channels-last), and optionally an older mnemo (OLD=path), alternated,
# ROUNDS times; steps/s from mnemo's own epoch `seconds` (second epoch of two, 10 steps each)
# and torch's timed loop (10 steps after a warm-up). Prints uptime before and after.
#   bash bench/lite0_train.sh            # needs target/release/mnemo and the torch venv
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
MNEMO=${MNEMO:-$root/target/release/mnemo}
ROUNDS=${ROUNDS:-3}
py="$("$root/scripts/venv.sh")"
w="$(mktemp -d)"; trap 'rm -rf "$w"' EXIT
"$MNEMO" data shapes -n 320 --size 64 --seed 10 --task seg -o "$w/seg.st" >/dev/null
"$MNEMO" data normalize "$w/seg.st" --imagenet -o "$w/segn.st" >/dev/null
"$MNEMO" init --arch effnet_multitask:trunk=lite0,image_size=64,num_classes=5,stochastic_depth=0,bn_momentum=0.1 \
  --seed 1 -o "$w/init.st" >/dev/null
mn() { "$1" train-ewc "$w/init.st" --data "$w/segn.st" --head seg --loss dice-bce --optimizer adam \
  --lr 1e-3 --batch-size 32 --epochs 2 -q -o "$w/o.st" | grep '"epoch":2' | sed 's/.*"seconds":\([0-9.]*\).*/\1/'; }
echo "uptime before: $(uptime)"
for r in $(seq "$ROUNDS"); do
  a=$(mn "$MNEMO")
  o=""; [ -n "${OLD:-}" ] && o=$(mn "$OLD")
  t=$("$py" "$root/bench/lite0_train.py" "$w/segn.st" 10 0)
  tl=$("$py" "$root/bench/lite0_train.py" "$w/segn.st" 10 1)
  awk -v r="$r" -v a="$a" -v o="$o" -v t="$t" -v tl="$tl" 'BEGIN {
    printf "round %d: mnemo %.2f steps/s", r, 10 / a
    if (o != "") printf ", mnemo before %.2f steps/s (%.2fx)", 10 / o, o / a
    printf ", torch %.2f steps/s, torch channels-last %.2f steps/s; mnemo/torch %.2fx, mnemo/torch-cl %.2fx\n", 10 / t, 10 / tl, t / a, tl / a }'
done
echo "uptime after: $(uptime)"
