#!/usr/bin/env bash
# Multi-task vision continual learning on one shared EfficientNet-Lite0 trunk (ImageNet weights
# with PRETRAINED=lite0_imagenet.safetensors, from `mnemo convert`; random otherwise): three stages,
# segmentation → detection (multi-label presence) → classification, each training its own
# head (`effnet_multitask`: heads seg [B,1,H,W], det [B,LABELS], cls [B,CLASSES]) and the
# shared trunk. Methods: finetune (no protection) and ewc (a Fisher penalty per earlier task,
# computed with that task's own head and loss, anchored at the snapshot after its stage);
# BALANCE=1 adds ewc-balanced: after stage 3, a short fine-tune of each head in turn on
# BALANCE_N stored examples of its task, at a tenth of the learning rate, under every penalty.
#
# Data: `mnemo data shapes` (generated offline: shapes on textured backgrounds; DATA_SEED) unless
# SEG/DET/CLS point at imported datasets (prefix: PREFIX-train/-val/-test.safetensors, e.g.
# from `mnemo data import voc --mask binary`, `data import coco`, `data import folder`);
# NORMALIZE=imagenet (the default) gives the model ImageNet-normalized copies (`data normalize`).
# SEED is the training seed (heads' init, batch order, dropout), recorded as `seed`.
# Records: one `mnemo eval --stage S --task T` line per (stage, task) in $OUT/results.jsonl
# (seg: miou, det: map, cls: accuracy), training curves in $OUT/curves/, snapshots and
# Fisher files in $OUT/runs/. The forgetting criterion (every task's metric ≥ its value
# after its own stage − MAX_DROP points) is `mnemo check --metric miou,map,accuracy`.
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
OUT=${OUT:-out}
SIZE=${SIZE:-64}
N_TRAIN=${N_TRAIN:-2000}
N_VAL=${N_VAL:-200}
N_TEST=${N_TEST:-500}
EPOCHS=${EPOCHS:-3}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
SEED=${SEED:-1}
DATA_SEED=${DATA_SEED:-1}
NORMALIZE=${NORMALIZE:-imagenet}
LABELS=${LABELS:-80}
CLASSES=${CLASSES:-5}
# The Lite0 trunk padded for SIZE, without stochastic depth, with torch's batchnorm momentum
# (the package's 0.01 barely leaves ImageNet's statistics in a few hundred steps).
ARCH=${ARCH:-effnet_multitask:trunk=lite0,image_size=$SIZE,num_classes=$CLASSES,num_labels=$LABELS,stochastic_depth=0,bn_momentum=0.1}
PRETRAINED=${PRETRAINED:-}
LAMBDA=${LAMBDA:-1000}
FISHER_N=${FISHER_N:-256}
METHODS=${METHODS:-finetune ewc}
BALANCE=${BALANCE:-0}
BALANCE_N=${BALANCE_N:-64}
MAX_DROP=${MAX_DROP:-5}
SEG=${SEG:-} DET=${DET:-} CLS=${CLS:-}
DATA_DIR=${DATA_DIR:-$OUT/data}   # shared by runs of several seeds

say() { echo "multitask-vision: $*" >&2; }
mkdir -p "$DATA_DIR" "$OUT/curves" "$OUT/runs"

# --- data: train/val/test per task (generated unless given) ---------------------------
tasks=(seg det cls)
heads=(seg det cls)
losses=(dice-bce bce ce)
declare -A prefix=([seg]="$SEG" [det]="$DET" [cls]="$CLS")
for i in 0 1 2; do
  t=${tasks[$i]}
  if [ -z "${prefix[$t]}" ]; then
    prefix[$t]="$DATA_DIR/$t"
    extra=()
    [ "$t" = det ] && extra=(--labels "$LABELS")
    for part in train:$N_TRAIN:$((DATA_SEED * 10 + i)) val:$N_VAL:$((DATA_SEED * 10 + i + 100)) \
                test:$N_TEST:$((DATA_SEED * 10 + i + 200)); do
      IFS=: read -r name n s <<< "$part"
      f="$DATA_DIR/$t-$name.safetensors"
      [ -f "$f" ] || "$MNEMO" data shapes -n "$n" --size "$SIZE" --seed "$s" --task "$t" \
        ${extra[@]+"${extra[@]}"} -o "$f" >/dev/null
    done
  fi
done
if [ "$NORMALIZE" = imagenet ]; then
  mkdir -p "$DATA_DIR/imagenet"
  for t in "${tasks[@]}"; do
    for part in train val test; do
      f="$DATA_DIR/imagenet/$t-$part.safetensors"
      [ -f "$f" ] || "$MNEMO" data normalize "${prefix[$t]}-$part.safetensors" --imagenet -o "$f" >/dev/null
    done
    prefix[$t]="$DATA_DIR/imagenet/$t"
  done
elif [ "$NORMALIZE" != none ]; then
  say "NORMALIZE must be imagenet or none, not '$NORMALIZE'"; exit 2
fi
data() { echo "${prefix[$1]}-$2.safetensors"; }

results="$OUT/results.jsonl"
: > "$results"
# record METHOD STAGE MODEL: the three tasks' test metrics, each through its own head.
record() {
  local j
  for j in 0 1 2; do
    "$MNEMO" eval "$3" --data "$(data "${tasks[$j]}" test)" --head "${heads[$j]}" \
      --loss "${losses[$j]}" --stage "$2" --task $((j + 1)) --label "method=$1" \
      --label "seed=$SEED" -q >> "$results"
  done
}

m0="$OUT/runs/init.safetensors"
init=(--arch "$ARCH" --seed "$SEED")
[ -n "$PRETRAINED" ] && init+=(--from "$PRETRAINED")
"$MNEMO" init "${init[@]}" -o "$m0" >/dev/null
TRAIN=(--optimizer adam --lr "$LR" --batch-size "$BATCH" --epochs "$EPOCHS" --seed "$SEED" -q)

for method in $METHODS; do
  d="$OUT/runs/$method"
  mkdir -p "$d"
  say "$method"
  record "$method" 0 "$m0"
  prev="$m0" penalties=()
  for i in 0 1 2; do
    t=${tasks[$i]} k=$((i + 1))
    out="$d/stage$k-$t.safetensors"
    pen=()
    [ "$method" = ewc ] && pen=(${penalties[@]+"${penalties[@]}"} --lambda "$LAMBDA")
    "$MNEMO" train-ewc "$prev" --data "$(data "$t" train)" --val "$(data "$t" val)" \
      --head "${heads[$i]}" --loss "${losses[$i]}" ${pen[@]+"${pen[@]}"} "${TRAIN[@]}" \
      -o "$out" > "$OUT/curves/$method-stage$k-$t.jsonl"
    record "$method" "$k" "$out"
    if [ "$method" = ewc ]; then
      "$MNEMO" fisher "$out" --data "$(data "$t" train)" --head "${heads[$i]}" \
        --loss "${losses[$i]}" --samples "$FISHER_N" -o "$d/fisher$k-$t.safetensors" >/dev/null
      penalties+=(--penalty "$d/fisher$k-$t.safetensors:$out")
    fi
    prev="$out"
  done
  if [ "$method" = ewc ] && [ "$BALANCE" = 1 ]; then
    # ewc-balanced: stages 0-2 are ewc's; stage 3 is ewc's stage 3 after the balancing pass.
    grep '"method":"ewc"' "$results" | grep -v '"stage":3' | sed 's/"method":"ewc"/"method":"ewc-balanced"/' >> "$results"
    b="$prev"
    for i in 0 1 2; do
      t=${tasks[$i]}
      "$MNEMO" data take "$(data "$t" train)" "$BALANCE_N" -o "$d/balance-$t.safetensors" >/dev/null
      "$MNEMO" train-ewc "$b" --data "$d/balance-$t.safetensors" --head "${heads[$i]}" \
        --loss "${losses[$i]}" ${penalties[@]+"${penalties[@]}"} --lambda "$LAMBDA" \
        --optimizer adam --lr "$(awk "BEGIN{print $LR/10}")" --batch-size "$BATCH" --epochs 1 \
        --seed "$SEED" -q -o "$d/balanced-$t.safetensors" > "$OUT/curves/ewc-balance-$t.jsonl"
      b="$d/balanced-$t.safetensors"
    done
    record ewc-balanced 3 "$b"
  fi
done
say "results in $results"
