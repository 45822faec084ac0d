#!/usr/bin/env bash
# Permuted MNIST (van de Ven & Tolias 2019, "Three scenarios for continual learning",
# domain-incremental): ten tasks, each MNIST under its own fixed pixel permutation
# (`mnemo data permute --seed k`); an MLP 784-1000-1000-10, Adam lr 1e-4, batch 128, ITERS
# updates per task. Methods: none (fine-tuning), EWC (a penalty per earlier task), online
# EWC (one accumulated Fisher, γ = GAMMA). As in van de Ven & Tolias's code, Adam's moments
# carry from task to task (--save-optimizer / --init-optimizer); OPTIMIZER=reset starts a
# fresh Adam at every task instead, as Avalanche does. Records as in examples/split-mnist: one
# `mnemo eval --stage --label` line per (stage, task) in $OUT/results.jsonl.
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
DATA=${DATA:-data/mnist}
OUT=${OUT:-out}
TASKS=${TASKS:-10}
ITERS=${ITERS:-5000}
SEEDS=${SEEDS:-1}
METHODS=${METHODS:-none ewc online-ewc}
TRAIN_N=${TRAIN_N:-0}
TEST_N=${TEST_N:-0}
HIDDEN=${HIDDEN:-1000}
# van de Ven & Tolias's values for domain-incremental permuted MNIST (their code's
# param_values.py of 2019): EWC λ = 500, online EWC λ = 1000 with γ = 0.9, each on
# ½·Σ F (θ − θ*)². mnemo's penalty has no ½: the same penalties are 250 and 500.
LAMBDA=${LAMBDA:-250}
ONLINE_LAMBDA=${ONLINE_LAMBDA:-500}
GAMMA=${GAMMA:-0.9}
OPTIMIZER=${OPTIMIZER:-carry}
# The Fisher's label: empirical (the true one) or predicted (the model's argmax, as van de
# Ven & Tolias's code does).
FISHER_MODE=${FISHER_MODE:-empirical}
# Their code's data: PAD=2 zero-pads the 28×28 digits to 32×32 before permuting (1,024
# inputs), FIRST_UNPERMUTED=1 leaves task 1 as plain MNIST.
PAD=${PAD:-0}
FIRST_UNPERMUTED=${FIRST_UNPERMUTED:-0}

mkdir -p "$OUT/data"
say() { echo "permuted-mnist: $*" >&2; }
for part in train test; do
  src="$DATA/$part.safetensors"
  take=$([ "$part" = train ] && echo "$TRAIN_N" || echo "$TEST_N")
  if [ "$take" -gt 0 ]; then
    "$MNEMO" data take "$src" "$take" -o "$OUT/data/$part-base.safetensors" >/dev/null
    src="$OUT/data/$part-base.safetensors"
  fi
  if [ "$PAD" -gt 0 ]; then
    "$MNEMO" data pad "$src" --pad "$PAD" --shape 28,28 -o "$OUT/data/$part-pad.safetensors" >/dev/null
    src="$OUT/data/$part-pad.safetensors"
  fi
  for k in $(seq 1 "$TASKS"); do
    f="$OUT/data/task$k-$part.safetensors"
    if [ "$k" = 1 ] && [ "$FIRST_UNPERMUTED" = 1 ]; then
      cp "$src" "$f"
    else
      [ -f "$f" ] || "$MNEMO" data permute "$src" --seed "$k" -o "$f" >/dev/null
    fi
  done
done
n=$("$MNEMO" data stats "$OUT/data/task1-train.safetensors" | sed 's/.*"examples":\([0-9]*\).*/\1/')
inputs=$(( (28 + 2 * PAD) * (28 + 2 * PAD) ))
per_epoch=$(( (n + 127) / 128 ))
epochs=$(( (ITERS + per_epoch - 1) / per_epoch ))
batches=$(( (ITERS + epochs - 1) / epochs ))
say "$ITERS updates per task: $epochs epoch(s) of $batches batches of 128 ($n examples)"
TRAIN="--optimizer adam --lr 1e-4 --batch-size 128 --epochs $epochs --max-batches-per-epoch $batches -q"

results="$OUT/results.jsonl"
: > "$results"
tests=()
for k in $(seq 1 "$TASKS"); do tests+=("$OUT/data/task$k-test.safetensors"); done
# Runs with the predicted-label Fisher are a different run in the records.
fisher_label=()
[ "$FISHER_MODE" != empirical ] && fisher_label=(--label "fisher=$FISHER_MODE")
[ "$PAD" -gt 0 ] && fisher_label+=(--label "pad=p$PAD")
[ "$FIRST_UNPERMUTED" = 1 ] && fisher_label+=(--label "first=unpermuted")
record() {
  "$MNEMO" eval "$5" --data "${tests[@]}" --stage "$4" -q \
    --label "scenario=domain" --label "method=$2" --label "optimizer=$OPTIMIZER" ${fisher_label[@]+"${fisher_label[@]}"} --label "seed=$3" | grep '"task"' >> "$results"
}

for seed in $SEEDS; do
  dir="$OUT/runs/seed$seed"
  mkdir -p "$dir"
  m0="$dir/init.safetensors"
  "$MNEMO" init --arch "mlp:$inputs-$HIDDEN-$HIDDEN-10" --seed "$seed" -o "$m0" >/dev/null
  for method in $METHODS; do
    say "seed $seed, $method"
    d="$dir/$method"
    rm -rf "$d" && mkdir -p "$d"
    record x "$method" "$seed" 0 "$m0"
    prev="$m0" penalties=()
    for k in $(seq 1 "$TASKS"); do
      train="$OUT/data/task$k-train.safetensors"
      out="$d/model$k.safetensors"
      optim=()
      if [ "$OPTIMIZER" = carry ]; then
        [ "$k" -gt 1 ] && optim=(--init-optimizer "$d/adam$((k - 1)).safetensors")
        optim+=(--save-optimizer "$d/adam$k.safetensors")
      fi
      case $method in
        none) "$MNEMO" train-ewc "$prev" --data "$train" $TRAIN ${optim[@]+"${optim[@]}"} --seed "$seed" -o "$out" >/dev/null ;;
        ewc)
          "$MNEMO" train-ewc "$prev" --data "$train" ${penalties[@]+"${penalties[@]}"} --lambda "$LAMBDA" \
            $TRAIN ${optim[@]+"${optim[@]}"} --seed "$seed" -o "$out" >/dev/null
          "$MNEMO" fisher "$out" --data "$train" --mode "$FISHER_MODE" -o "$d/fisher$k.safetensors" >/dev/null
          penalties+=(--penalty "$d/fisher$k.safetensors:$out") ;;
        online-ewc)
          "$MNEMO" train-ewc "$prev" --data "$train" ${penalties[@]+"${penalties[@]}"} --lambda "$ONLINE_LAMBDA" \
            $TRAIN ${optim[@]+"${optim[@]}"} --seed "$seed" -o "$out" >/dev/null
          acc=()
          [ "$k" -gt 1 ] && acc=(--accumulate "$d/fisher$((k - 1)).safetensors" --gamma "$GAMMA")
          "$MNEMO" fisher "$out" --data "$train" --mode "$FISHER_MODE" ${acc[@]+"${acc[@]}"} -o "$d/fisher$k.safetensors" >/dev/null
          penalties=(--penalty "$d/fisher$k.safetensors:$out") ;;
        *) echo "unknown method $method" >&2; exit 2 ;;
      esac
      record x "$method" "$seed" "$k" "$out"
      prev="$out"
    done
  done
done
say "results in $results"
