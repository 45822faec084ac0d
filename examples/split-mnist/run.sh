#!/usr/bin/env bash
# Split-MNIST (Hsu et al. 2018, "Re-evaluating continual learning scenarios"): five tasks
# (0/1, 2/3, 4/5, 6/7, 8/9), domain-incremental (every task relabelled 0/1, a 2-way head)
# and class-incremental (the original labels, one 10-way head); an MLP 784-400-400, Adam
# lr 1e-3, batch 128. Methods: fine-tuning, EWC (a penalty per earlier task), online EWC
# (one accumulated Fisher), replay (a 1100-example reservoir buffer), joint training; on
# request (METHODS=...), ER-ACE (er-ace: replay with the new batch's loss over its present
# classes) and DER++ (derpp: CE(new) + α·MSE to stored logits + β·CE on replayed labels),
# with the same buffer.
#
# Every model after every task is evaluated on every task's test set (and the initial model,
# stage 0, for forward transfer); each evaluation is one JSON line in $OUT/results.jsonl, as
# `mnemo eval --stage --label` writes them:
#   {"loss":..,"accuracy":..,"task":2,"stage":3,"scenario":"domain","method":"ewc","seed":1,...}
# (joint training has only stage 5). `mnemo report` and `mnemo check` read them. The
# settings come from the environment (see the Makefile beside this file).
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
DATA=${DATA:-data/mnist}          # train.safetensors and test.safetensors (make mnist)
OUT=${OUT:-out}
EPOCHS=${EPOCHS:-4}
SEEDS=${SEEDS:-1}
SCENARIOS=${SCENARIOS:-domain class}
METHODS=${METHODS:-finetune ewc online-ewc replay joint}
TRAIN_N=${TRAIN_N:-0}             # examples per task for training (0: all)
TEST_N=${TEST_N:-0}               # examples per task for testing (0: all)
LAMBDA=${LAMBDA:-100000}          # EWC strength (no 1/2 factor)
ONLINE_LAMBDA=${ONLINE_LAMBDA:-100000}
GAMMA=${GAMMA:-1.0}               # online EWC decay
CAPACITY=${CAPACITY:-1100}
RATIO=${RATIO:-0.5}
DER_ALPHA=${DER_ALPHA:-0.5}       # DER++'s α (logit MSE) and β (replayed labels), untuned
DER_BETA=${DER_BETA:-0.5}
TASKS="0,1 2,3 4,5 6,7 8,9"
TRAIN="--optimizer adam --lr 1e-3 --batch-size 128 --epochs $EPOCHS -q"

mkdir -p "$OUT/data"
say() { echo "split-mnist: $*" >&2; }

# The tasks' datasets, per scenario.
for sc in $SCENARIOS; do
  for t in $TASKS; do
    n=${t/,/-}
    relabel=$([ "$sc" = domain ] && echo --relabel || true)
    for part in train test; do
      f="$OUT/data/$sc-$n-$part.safetensors"
      [ -f "$f" ] && continue
      "$MNEMO" data split "$DATA/$part.safetensors" --classes "$t" $relabel -o "$f.tmp.safetensors" >/dev/null
      take=$([ "$part" = train ] && echo "$TRAIN_N" || echo "$TEST_N")
      if [ "$take" -gt 0 ]; then
        "$MNEMO" data shuffle "$f.tmp.safetensors" --seed 0 -o "$f.tmp.safetensors" >/dev/null
        "$MNEMO" data take "$f.tmp.safetensors" "$take" -o "$f" >/dev/null
        rm "$f.tmp.safetensors"
      else
        mv "$f.tmp.safetensors" "$f"
      fi
    done
  done
done

results="$OUT/results.jsonl"
: > "$results"

# record SCENARIO METHOD SEED STAGE MODEL: evaluates MODEL on every task's test set.
record() {
  local sc=$1 method=$2 seed=$3 stage=$4 model=$5 tests=()
  for t in $TASKS; do tests+=("$OUT/data/$sc-${t/,/-}-test.safetensors"); done
  "$MNEMO" eval "$model" --data "${tests[@]}" --stage "$stage" -q \
    --label "scenario=$sc" --label "method=$method" --label "seed=$seed" | grep '"task"' >> "$results"
}

for seed in $SEEDS; do
  for sc in $SCENARIOS; do
    classes=$([ "$sc" = domain ] && echo 2 || echo 10)
    dir="$OUT/runs/$sc/seed$seed"
    mkdir -p "$dir"
    m0="$dir/init.safetensors"
    "$MNEMO" init --arch "mlp:784-400-400-$classes" --seed "$seed" -o "$m0" >/dev/null
    for method in $METHODS; do
      say "seed $seed, $sc-incremental, $method"
      d="$dir/$method"
      rm -rf "$d" && mkdir -p "$d"
      [ "$method" != joint ] && record "$sc" "$method" "$seed" 0 "$m0"
      if [ "$method" = joint ]; then
        parts=()
        for t in $TASKS; do parts+=("$OUT/data/$sc-${t/,/-}-train.safetensors"); done
        "$MNEMO" data concat "${parts[@]}" -o "$d/all.safetensors" >/dev/null
        "$MNEMO" train-ewc "$m0" --data "$d/all.safetensors" $TRAIN --seed "$seed" -o "$d/model5.safetensors" >/dev/null
        record "$sc" "$method" "$seed" 5 "$d/model5.safetensors"
        continue
      fi
      prev="$m0" i=0 penalties=()
      for t in $TASKS; do
        i=$((i + 1))
        train="$OUT/data/$sc-${t/,/-}-train.safetensors"
        out="$d/model$i.safetensors"
        case $method in
          finetune)
            "$MNEMO" train-ewc "$prev" --data "$train" $TRAIN --seed "$seed" -o "$out" >/dev/null ;;
          ewc)
            "$MNEMO" train-ewc "$prev" --data "$train" ${penalties[@]+"${penalties[@]}"} --lambda "$LAMBDA" \
              $TRAIN --seed "$seed" -o "$out" >/dev/null
            "$MNEMO" fisher "$out" --data "$train" -o "$d/fisher$i.safetensors" >/dev/null
            penalties+=(--penalty "$d/fisher$i.safetensors:$out") ;;
          online-ewc)
            "$MNEMO" train-ewc "$prev" --data "$train" ${penalties[@]+"${penalties[@]}"} --lambda "$ONLINE_LAMBDA" \
              $TRAIN --seed "$seed" -o "$out" >/dev/null
            acc=()
            [ "$i" -gt 1 ] && acc=(--accumulate "$d/fisher$((i - 1)).safetensors" --gamma "$GAMMA")
            "$MNEMO" fisher "$out" --data "$train" ${acc[@]+"${acc[@]}"} -o "$d/fisher$i.safetensors" >/dev/null
            penalties=(--penalty "$d/fisher$i.safetensors:$out") ;;
          replay)
            "$MNEMO" replay-train "$prev" --data "$train" --buffer "$d/buffer.safetensors" --capacity "$CAPACITY" \
              --replay-ratio "$RATIO" $TRAIN --seed "$seed" -o "$out" >/dev/null ;;
          er-ace)
            "$MNEMO" replay-train "$prev" --data "$train" --buffer "$d/buffer.safetensors" --capacity "$CAPACITY" \
              --replay-ratio "$RATIO" --incoming-loss ace $TRAIN --seed "$seed" -o "$out" >/dev/null ;;
          derpp)
            "$MNEMO" replay-train "$prev" --data "$train" --buffer "$d/buffer.safetensors" --capacity "$CAPACITY" \
              --distill "$DER_ALPHA" --replay-labels "$DER_BETA" $TRAIN --seed "$seed" -o "$out" >/dev/null ;;
          *) echo "unknown method $method" >&2; exit 2 ;;
        esac
        record "$sc" "$method" "$seed" "$i" "$out"
        prev="$out"
      done
    done
  done
done
say "results in $results"
