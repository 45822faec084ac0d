#!/usr/bin/env bash
# Builds fixtures/mnist-small/ (what `make demo` runs on) from the real MNIST that
# `make mnist` fetches: the first 100 training and 50 test images of each digit, in a
# seeded order. Deterministic: the same MNIST files give the same bytes.
#   usage: scripts/make-mnist-small.sh [MNEMO] [MNIST_DIR]
set -euo pipefail
MNEMO=${1:-target/release/mnemo}
SRC=${2:-data/mnist}
OUT=fixtures/mnist-small
tmp=target/mnist-small-build  # a fixed path: it is recorded in the provenance
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"
for part in train test; do
  n=$([ "$part" = train ] && echo 100 || echo 50)
  parts=()
  for c in 0 1 2 3 4 5 6 7 8 9; do
    "$MNEMO" data split "$SRC/$part.safetensors" --classes "$c" -o "$tmp/$c.safetensors" >/dev/null
    "$MNEMO" data take "$tmp/$c.safetensors" "$n" -o "$tmp/$part-$c.safetensors" >/dev/null
    parts+=("$tmp/$part-$c.safetensors")
  done
  "$MNEMO" data concat "${parts[@]}" -o "$tmp/$part.safetensors" >/dev/null
  "$MNEMO" data shuffle "$tmp/$part.safetensors" --seed 0 -o "$OUT/$part.safetensors" >/dev/null
done
ls -l "$OUT"
