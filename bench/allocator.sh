#!/usr/bin/env bash
# Training-step throughput of mnemo with mimalloc (the default) vs glibc malloc:
# mlp:784-400-400-10, batch 128, AdamW, 2 threads, random MNIST-shaped data.
# Usage: bench/allocator.sh   (builds both variants; prints steps/s for each and the ratio)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-alloc; mkdir -p "$out"
cargo build --release -q && cp target/release/mnemo "$out/mnemo-mimalloc"
cargo build --release -q --no-default-features && cp target/release/mnemo "$out/mnemo-glibc"
cargo build --release -q   # leave the default binary in place
python3 - "$out/data.safetensors" <<'PY'
import json, struct, sys, random
random.seed(0)
n, d = 128 * 40, 784
x = bytes(random.getrandbits(8) for _ in range(n * d))
y = b"".join(struct.pack("<q", random.randrange(10)) for _ in range(n))
h = json.dumps({"input": {"dtype": "U8", "shape": [n, d], "data_offsets": [0, len(x)]},
                "target": {"dtype": "I64", "shape": [n], "data_offsets": [len(x), len(x) + len(y)]}}).encode()
h += b" " * (-(8 + len(h)) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + x + y)
PY
"$out/mnemo-mimalloc" init --arch mlp:784-400-400-10 -o "$out/model.safetensors" >/dev/null
for v in glibc mimalloc; do
  s=$( { /usr/bin/time -f %e "$out/mnemo-$v" train-ewc "$out/model.safetensors" --data "$out/data.safetensors" \
        --optimizer adamw --batch-size 128 --epochs 1 --no-shuffle -q -o "$out/trained-$v.safetensors" >/dev/null; } 2>&1 )
  echo "$v: 40 steps in ${s}s = $(python3 -c "print(round(40/$s, 1))") steps/s"
done
