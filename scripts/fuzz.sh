#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for FUZZ_SECONDS each, one at a time, each corpus seeded
# from the fixtures, and prints one summary line per target (executions, executions per
# second, crashes). Crashing inputs land in fuzz/artifacts/<target>/; keep each one as a
# regression under fuzz/regressions/<target>/ (replayed by `cargo test --test
# fuzz_regressions`) once fixed.
#
#   FUZZ_SECONDS=600 scripts/fuzz.sh [TARGET...]
# FUZZ_SANITIZER: address (default) or none. FUZZ_TARGET_DIR: cargo's target dir.
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz uses.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
ALL=(safetensors hf_index arch_spec jsonl_field import_idx import_npy import_npz continual_records adapter_config pth loss_curves)
TARGETS=("${@:-${ALL[@]}}")
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$ROOT/fuzz"
fx=$ROOT/fixtures

# Seeds: the fixtures each reader is made for (libFuzzer only adds to these folders).
seed() {  # seed TARGET
  local c=corpus/$1
  mkdir -p "$c"
  case $1 in
  safetensors)
    for f in "$fx"/*.safetensors "$fx"/mlp_sharded/*.safetensors; do
      [ "$(stat -c %s "$f")" -le 8192 ] && cp "$f" "$c/"
    done ;;
  hf_index)
    cp "$fx/mlp_sharded/model.safetensors.index.json" "$c/"
    printf '{"metadata":{"total_size":28},"weight_map":{"w":"a.safetensors","b":"a.safetensors","v":"b.safetensors"}}' > "$c/shards" ;;
  arch_spec)
    cp "$fx"/*.arch.json "$c/"
    printf 'mlp:784-400-400-10' > "$c/mlp"
    printf 'resnet18:num_classes=10' > "$c/zoo-resnet"
    printf 'efficientnet_b0:num_classes=10,width_mult=0.25,depth_mult=0.25' > "$c/zoo-effnet"
    printf 'vit:image_size=32,patch_size=4,dim=64,depth=2,heads=4,mlp_dim=128,num_classes=10' > "$c/zoo-vit" ;;
  jsonl_field)
    printf 'loss\n{"loss":0.25,"epoch":1}' > "$c/loss"
    printf 'a.b.0\n{"a":{"b":[1.5,2]},"s":"x"}' > "$c/path"
    printf 'err\n{"err":true}' > "$c/binary"
    printf 'loss\n0.5' > "$c/bare" ;;
  import_idx)
    # flags, 2-byte length of the images file, images [2, 2, 2], labels [2].
    printf '\x01\x18\x00\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x08\x01\x00\x00\x00\x02\x00\x01' > "$c/mnist" ;;
  import_npy)
    local x y
    for pair in "x_u8 y_u8" "x_f32 y_i64" "x_fortran y_i64"; do
      read -r x y <<< "$pair"
      { printf "\\x$(printf %02x $(( $(stat -c %s "$fx/data/$x.npy") % 256 )))\\x$(printf %02x $(( $(stat -c %s "$fx/data/$x.npy") / 256 )))"
        cat "$fx/data/$x.npy" "$fx/data/$y.npy"; } > "$c/$x-$y"
    done ;;
  import_npz)
    cp "$fx"/data/*.npz "$c/" ;;
  continual_records)
    printf 'accuracy\n{"stage":1,"task":1,"accuracy":0.9,"method":"ewc","seed":1}\n{"stage":2,"task":1,"accuracy":0.8}\n{"stage":2,"task":2,"accuracy":0.7}\n' > "$c/matrix"
    printf 'miou,accuracy\n{"stage":0,"task":1,"miou":0.1}\n{"stage":1,"task":1,"accuracy":0.5}\n' > "$c/metrics" ;;
  adapter_config)
    cp "$fx"/lora/*/adapter_config.json "$c/" 2>/dev/null || true
    for d in "$fx"/lora/*/; do cp "$d/adapter_config.json" "$c/$(basename "$d").json"; done ;;
  pth)
    # Both formats torch writes, a training checkpoint and the hostile files gen.py made.
    cp "$fx"/pth/*.pth "$c/" ;;
  loss_curves)
    printf '{"event":"epoch","epoch":1,"task_loss":2.0,"val_loss":2.5,"replay_loss":1.0}\n{"event":"epoch","epoch":2,"task_loss":1.0,"val_loss":1.5}\n' > "$c/epochs"
    printf '{"event":"step","epoch":1,"step":1,"task_loss":3.0}\n{"event":"step","epoch":1,"step":2,"task_loss":2.0}\n{"event":"epoch","epoch":1,"task_loss":2.5}\n' > "$c/steps" ;;
  esac
}

printf '%-12s %12s %10s %8s %s\n' target executions exec/s crashes seconds
for t in "${TARGETS[@]}"; do
  seed "$t"
  log=$(mktemp)
  set +e
  cargo fuzz run --sanitizer "$FUZZ_SANITIZER" --target-dir "$FUZZ_TARGET_DIR" "$t" "corpus/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -rss_limit_mb=4096 -timeout=20 \
    > "$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=$(ls "artifacts/$t" 2>/dev/null | grep -c -E '^(crash|leak|timeout|oom)-' || true)
  printf '%-12s %12s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$FUZZ_SECONDS"
  if [ $rc -ne 0 ]; then
    echo "fuzz: $t stopped with exit $rc; the log's tail:" >&2
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
