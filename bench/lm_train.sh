#!/usr/bin/env bash
# Training a small Llama (transformers' LlamaForCausalLM config: hidden 256, 4 layers, 4 heads,
# 2 KV heads, MLP 768, vocab 2048; 6.3M parameters) on random token sequences of T=128:
# `mnemo train-ewc FOLDER --optimizer adamw` against the transformers + torch loop a user writes
# (bench/lm_train.py: eager attention, AdamW, the model's own causal-LM loss), same folder, same
# data, batch 16, alternated, ROUNDS times; tokens/s of training. mnemo's figure is its whole
# process (start, loading, writing the output) minus nothing; torch's is its loop alone after a
# warm-up step. Prints uptime before and after: a ratio taken under load is not a result.
#   bash bench/lm_train.sh            # needs target/release/mnemo and the torch venv
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
MNEMO=${MNEMO:-$root/target/release/mnemo}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-20}
BATCH=${BATCH:-16}
T=${T:-128}
py="$("$root/scripts/venv.sh")"
w="$(mktemp -d)"; trap 'rm -rf "$w"' EXIT
"$py" - "$w" "$T" "$((STEPS * BATCH))" <<'PY'
import sys, torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
w, t, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False)
LlamaForCausalLM(cfg).save_pretrained(f"{w}/model")
ids = torch.randint(0, 2048, (n, t))
save_file({"input": ids, "target": ids.clone()}, f"{w}/data.st")
PY
mn() {
  local s e
  s=$(date +%s.%N)
  "$MNEMO" train-ewc "$w/model" --data "$w/data.st" --optimizer adamw --lr 1e-3 --weight-decay 0 \
    --batch-size "$BATCH" --epochs 1 --no-shuffle -q -o "$w/out.st" > "$w/log.jsonl"
  e=$(date +%s.%N)
  echo "$s $e" | awk '{printf "%.4f", $2 - $1}'
}
tokens=$((STEPS * BATCH * T))
echo "uptime before: $(uptime)"
for r in $(seq "$ROUNDS"); do
  a=$(mn)
  read -r t loss < <("$py" "$root/bench/lm_train.py" "$w/model" "$w/data.st" "$BATCH" "$STEPS" 2>/dev/null)
  awk -v r="$r" -v a="$a" -v t="$t" -v n="$tokens" 'BEGIN {
    printf "round %d: mnemo %.0f tokens/s, torch %.0f tokens/s; mnemo/torch %.2fx\n", r, n / a, n / t, t / a }'
done
echo "uptime after: $(uptime)"
