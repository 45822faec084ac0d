#!/usr/bin/env bash
# The drift-triggered framework's MNIST protocol, as its authors describe it: ten tasks, one
# digit each (tasks 0-9), every task's images randomly rotated and translated, replay
# memories kept across tasks, $EPOCHS epochs per task; per task the training accuracy (the
# task's own training images), the test accuracy (the task's test digits, and all digits
# seen so far) and the memory accuracy (the replay buffer's examples), as their framework
# prints them. Fine-tuning runs beside replay for contrast.
#
# Then the same stream, task after task, is fed live to `mnemo online` (one example at a
# time, replaying from its own buffer, keeping an EMA), and `mnemo drift` watches its
# prequential error in the same pipe: each new digit is a drift it should flag.
#
# Writes $OUT/results.jsonl (one line per method and task), $OUT/table.md, $OUT/stages.jsonl
# (`eval --stage` on every digit's test set after every task, task and stage k + 1 for digit
# k: what `report` draws as the accuracy matrix, $OUT/matrix.png), $OUT/online.jsonl (the
# live stream's records, annotated by drift), $OUT/online.md.
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
DATA=${DATA:-data/mnist}         # train.safetensors and test.safetensors (flat [N, 784] U8)
OUT=${OUT:-out}
EPOCHS=${EPOCHS:-5}
DEGREES=${DEGREES:-30}           # rotation uniform in [-D, D]
TRANSLATE=${TRANSLATE:-0.1,0.1}  # shifts up to 10% of the width and height
CAPACITY=${CAPACITY:-2000}       # replay memory, kept across tasks
PER_TASK=${PER_TASK:-0}          # training images per task (0: all)
ONLINE_PER_TASK=${ONLINE_PER_TASK:-500}  # examples per task in the live stream
SEED=${SEED:-1}
ARCH=${ARCH:-mlp:784-256-256-10}
TRAIN="--optimizer adam --lr 1e-3 --batch-size 64 --seed $SEED -q"
METHODS=${METHODS:-"replay finetune"}

say() { echo "rotated-mnist-stream: $*" >&2; }
num() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | head -n 1; }
mkdir -p "$OUT/tasks"

# Tasks: digit k, rotated and translated at random per image (a seed per task and split).
for k in $(seq 0 9); do
  for split in train test; do
    t="$OUT/tasks/$split-$k.safetensors"
    "$MNEMO" data split "$DATA/$split.safetensors" --classes "$k" -o "$t.raw" >/dev/null
    if [ "$split" = train ] && [ "$PER_TASK" -gt 0 ]; then
      "$MNEMO" data take "$t.raw" "$PER_TASK" -o "$t.raw" >/dev/null
    fi
    seed=$((SEED * 100 + k * 2 + $([ "$split" = test ] && echo 1 || echo 0)))
    "$MNEMO" data augment "$t.raw" --shape 28,28 --degrees "$DEGREES" --translate "$TRANSLATE" \
      --seed "$seed" -o "$t" >/dev/null
    rm -f "$t.raw"
  done
done

"$MNEMO" init --arch "$ARCH" --seed "$SEED" -o "$OUT/init.safetensors" >/dev/null
results="$OUT/results.jsonl"
stages="$OUT/stages.jsonl"
: > "$results"
: > "$stages"
all_test=()
for k in $(seq 0 9); do all_test+=("$OUT/tasks/test-$k.safetensors"); done
acc() { "$MNEMO" eval "$1" --data "$2" -q | num accuracy; }
for method in $METHODS; do
  prev="$OUT/init.safetensors"
  buffer="$OUT/$method-buffer.safetensors"
  rm -f "$buffer"
  seen=()
  for k in $(seq 0 9); do
    train="$OUT/tasks/train-$k.safetensors"
    model="$OUT/$method-$k.safetensors"
    case "$method" in
      replay) "$MNEMO" replay-train "$prev" --data "$train" --buffer "$buffer" --capacity "$CAPACITY" \
                --epochs "$EPOCHS" $TRAIN -o "$model" >/dev/null ;;
      finetune) "$MNEMO" train-ewc "$prev" --data "$train" --epochs "$EPOCHS" $TRAIN -o "$model" >/dev/null ;;
    esac
    seen+=("$OUT/tasks/test-$k.safetensors")
    if [ "${#seen[@]}" -gt 1 ]; then
      "$MNEMO" data concat "${seen[@]}" -o "$OUT/seen-test.safetensors" >/dev/null
    else
      cp "${seen[0]}" "$OUT/seen-test.safetensors"
    fi
    line="{\"method\":\"$method\",\"task\":$k,\"train_accuracy\":$(acc "$model" "$train")"
    line="$line,\"task_test_accuracy\":$(acc "$model" "$OUT/tasks/test-$k.safetensors")"
    line="$line,\"seen_test_accuracy\":$(acc "$model" "$OUT/seen-test.safetensors")"
    if [ -f "$buffer" ]; then
      line="$line,\"memory_accuracy\":$(acc "$model" "$buffer")"
    fi
    echo "$line}" >> "$results"
    "$MNEMO" eval "$model" --data "${all_test[@]}" --task 1 --stage "$((k + 1))" --label method="$method" -q \
      | grep '"stage"' >> "$stages"
    say "$method task $k: $(tail -n 1 "$results")"
    prev="$model"
  done
done

# The table: one row per task, each method's columns side by side.
{
  echo "| task (digit) | $(for m in $METHODS; do printf '%s train | %s test (digit) | %s test (seen) | ' "$m" "$m" "$m"; [ "$m" = replay ] && printf 'replay memory | '; done | sed 's/ | $//') |"
  echo "|---|$(for m in $METHODS; do printf -- '---:|---:|---:|'; [ "$m" = replay ] && printf -- '---:|'; done)"
  for k in $(seq 0 9); do
    row="| $k"
    for m in $METHODS; do
      l=$(grep "\"method\":\"$m\",\"task\":$k," "$results")
      for f in train_accuracy task_test_accuracy seen_test_accuracy; do
        row="$row | $(echo "$l" | num "$f" | awk '{printf "%.1f", 100 * $1}')"
      done
      [ "$m" = replay ] && row="$row | $(echo "$l" | num memory_accuracy | awk '{printf "%.1f", 100 * $1}')"
    done
    echo "$row |"
  done
} > "$OUT/table.md"
cat "$OUT/table.md"
"$MNEMO" report "$stages" --kind matrix -o "$OUT/matrix.png" -q

# Live: the ten tasks in order, ONLINE_PER_TASK examples each, one at a time into `online`
# (replay from its own buffer, an EMA), and drift on its prequential error in the same pipe.
live=()
for k in $(seq 0 9); do
  "$MNEMO" data take "$OUT/tasks/train-$k.safetensors" "$ONLINE_PER_TASK" -o "$OUT/tasks/live-$k.safetensors" >/dev/null
  live+=("$OUT/tasks/live-$k.safetensors")
done
"$MNEMO" data concat "${live[@]}" -o "$OUT/live.safetensors" >/dev/null
rm -f "$OUT/online-buffer.safetensors" "$OUT/online.state"
"$MNEMO" data stream "$OUT/live.safetensors" \
  | "$MNEMO" online "$OUT/init.safetensors" --data - --optimizer adam --lr 1e-3 --seed "$SEED" \
      --buffer "$OUT/online-buffer.safetensors" --capacity "$CAPACITY" --replay-ratio 0.5 \
      --ema "$OUT/online-ema.safetensors" --ema-decay 0.99 --state "$OUT/online.state" \
      -o "$OUT/online-live.safetensors" -q \
  | "$MNEMO" drift --field error --detector ddm > "$OUT/online.jsonl" || true
detections=$(grep -c '"drift":true' "$OUT/online.jsonl" || true)
"$MNEMO" data concat "${all_test[@]}" -o "$OUT/all-test.safetensors" >/dev/null
{
  echo "| live stream | examples | DDM detections | first detection after each task switch | test accuracy, live | test accuracy, EMA |"
  echo "|---|---:|---:|---|---:|---:|"
  firsts=$(awk -v n="$ONLINE_PER_TASK" '/"drift":true/ { s = $0; sub(/.*"seen":/, "", s); sub(/,.*/, "", s); t = int((s - 1) / n); if (t > 0 && !(t in f)) { f[t] = s - t * n } } END { for (t = 1; t < 10; t++) printf "%s%s", (t > 1 ? ", " : ""), (t in f ? f[t] : "-") }' "$OUT/online.jsonl")
  echo "| $ONLINE_PER_TASK per digit, 0 to 9 | $((10 * ONLINE_PER_TASK)) | $detections | $firsts | $(acc "$OUT/online-live.safetensors" "$OUT/all-test.safetensors" | awk '{printf "%.1f", 100 * $1}') | $(acc "$OUT/online-ema.safetensors" "$OUT/all-test.safetensors" | awk '{printf "%.1f", 100 * $1}') |"
} > "$OUT/online.md"
cat "$OUT/online.md"
