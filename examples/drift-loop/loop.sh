#!/usr/bin/env bash
# The stream-monitor loop as a shell pipeline: a deployed model scores successive chunks of
# a labelled stream (eval --stream), drift watches the per-batch loss, and on drift a
# replay-train update with distillation (the buffer keeps the original training data and
# the old model's outputs) replaces the deployed model; monitoring then starts afresh.
# Halfway through, the stream's digits are rotated by $DEGREES (data rotate): the drift.
#
# Every decision is one JSON line in $OUT/decisions.jsonl:
#   {"chunk":7,"rotated":true,"loss":..,"accuracy":..,"drift":true,"action":"update","model":"..."}
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
DATA=${DATA:-data/mnist}        # train.safetensors and test.safetensors
OUT=${OUT:-out}
TRAIN_N=${TRAIN_N:-10000}       # examples the deployed model is trained on
CHUNK=${CHUNK:-500}             # examples per stream chunk
CHUNKS=${CHUNKS:-20}
DRIFT_AT=${DRIFT_AT:-10}        # first rotated chunk
DEGREES=${DEGREES:-45}
DETECTOR=${DETECTOR:-page-hinkley}
MIN_INSTANCES=${MIN_INSTANCES:-10}
FALSE_ALARM=${FALSE_ALARM:-0.001}  # per monitored value, on the calibration stream
CALIB_N=${CALIB_N:-5000}        # held-out training examples that calibrate the detector
CAPACITY=${CAPACITY:-2000}
EVAL_BATCH=${EVAL_BATCH:-50}     # examples per monitored loss value
DISTILL=${DISTILL:-0.5}
SEED=${SEED:-1}
TRAIN="--optimizer adam --lr 1e-3 --batch-size 64 --seed $SEED -q"

mkdir -p "$OUT/stream"
say() { echo "drift-loop: $*" >&2; }

# The deployed model, trained with replay-train so that its buffer starts with the
# original data (and, with distillation, the model's own outputs on it).
"$MNEMO" data shuffle "$DATA/train.safetensors" --seed "$SEED" -o "$OUT/train-shuffled.safetensors" >/dev/null
"$MNEMO" data take "$OUT/train-shuffled.safetensors" "$TRAIN_N" -o "$OUT/base.safetensors" >/dev/null
"$MNEMO" init --arch mlp:784-256-256-10 --seed "$SEED" -o "$OUT/init.safetensors" >/dev/null
rm -f "$OUT/buffer.safetensors"
"$MNEMO" replay-train "$OUT/init.safetensors" --data "$OUT/base.safetensors" --buffer "$OUT/buffer.safetensors" \
  --capacity "$CAPACITY" --distill "$DISTILL" --epochs 3 $TRAIN -o "$OUT/model-0.safetensors" >/dev/null
deployed="$OUT/model-0.safetensors"

# Calibrate the detector's threshold on a stable stream: the deployed model on held-out
# training data, for a false-alarm rate of $FALSE_ALARM per monitored value.
"$MNEMO" data take "$OUT/train-shuffled.safetensors" "$CALIB_N" --skip "$TRAIN_N" -o "$OUT/calib.safetensors" >/dev/null
"$MNEMO" eval "$deployed" --data "$OUT/calib.safetensors" --stream --batch-size "$EVAL_BATCH" -q | grep '"batch"' > "$OUT/calib.jsonl"
threshold=$("$MNEMO" drift --detector "$DETECTOR" --min-instances "$MIN_INSTANCES" --field loss --calibrate \
  --false-alarm-rate "$FALSE_ALARM" "$OUT/calib.jsonl" | sed 's/.*"value":\([^,]*\),.*/\1/')
DRIFT_FLAGS="--min-instances $MIN_INSTANCES --threshold $threshold"
say "$DETECTOR threshold $threshold (false-alarm rate $FALSE_ALARM on $CALIB_N held-out examples)"

# The stream: test images in a seeded order, cut into chunks; rotated from chunk DRIFT_AT on.
"$MNEMO" data shuffle "$DATA/test.safetensors" --seed "$SEED" -o "$OUT/test-shuffled.safetensors" >/dev/null
for i in $(seq 0 $((CHUNKS - 1))); do
  c="$OUT/stream/chunk-$i.safetensors"
  "$MNEMO" data take "$OUT/test-shuffled.safetensors" "$CHUNK" --skip $((i * CHUNK)) -o "$c" >/dev/null
  if [ "$i" -ge "$DRIFT_AT" ]; then
    "$MNEMO" data rotate "$c" --degrees "$DEGREES" --shape 28,28 -o "$c" >/dev/null
  fi
done

decisions="$OUT/decisions.jsonl"
monitor="$OUT/monitor.jsonl"      # per-batch losses since the last update
: > "$decisions"
: > "$monitor"
for i in $(seq 0 $((CHUNKS - 1))); do
  c="$OUT/stream/chunk-$i.safetensors"
  rotated=$([ "$i" -ge "$DRIFT_AT" ] && echo true || echo false)
  summary=$("$MNEMO" eval "$deployed" --data "$c" --stream --batch-size "$EVAL_BATCH" -q | tee -a "$monitor" | tail -n 1)
  sed -i '/"top5"/d' "$monitor"  # keep the batch lines only
  loss=$(echo "$summary" | sed 's/.*"loss":\([^,]*\),.*/\1/')
  acc=$(echo "$summary" | sed 's/.*"accuracy":\([^,]*\),.*/\1/')
  if "$MNEMO" drift --detector "$DETECTOR" $DRIFT_FLAGS --field loss -q "$monitor" >/dev/null; then
    # Drift: the chunk's labels arrive; update on it, replaying (and distilling) the old data.
    next="$OUT/model-$((i + 1)).safetensors"
    "$MNEMO" replay-train "$deployed" --data "$c" --buffer "$OUT/buffer.safetensors" --distill "$DISTILL" \
      --epochs 5 $TRAIN -o "$next" >/dev/null
    deployed="$next"
    : > "$monitor"
    action=update
    drift=true
  else
    action=none
    drift=false
  fi
  echo "{\"chunk\":$i,\"rotated\":$rotated,\"loss\":$loss,\"accuracy\":$acc,\"drift\":$drift,\"action\":\"$action\",\"model\":\"$deployed\"}" | tee -a "$decisions"
  say "chunk $i: accuracy $acc, drift $drift"
done
# How the final model does on the unrotated and the rotated test images it never trained on.
"$MNEMO" eval "$deployed" --data "$OUT/stream/chunk-0.safetensors" "$OUT/stream/chunk-$((CHUNKS - 1)).safetensors" -q \
  | grep '"task"' | sed 's/^/final: /' >&2
