#!/usr/bin/env bash
# Continual learning on text: a small Llama (examples/text-cl/config.json, transformers'
# LlamaForCausalLM layout, 1.05M parameters, tied embeddings) learns domain A (the fortune
# cookie files of Debian's `fortunes`), then domain B (the Python 3.11 documentation sources
# of `python3.11-doc`), by fine-tuning, EWC, replay and a gated LoRA adapter. Perplexity on
# A's and B's held-out rows after each stage goes to $OUT/results.jsonl, $OUT/table.md and
# $OUT/stages.jsonl (eval lines with --stage: `report --kind matrix --metric token_accuracy`
# draws them, as `make` does into $OUT/token-accuracy.png).
#
# lora-gate runs twice on B: gated on A's validation perplexity (an update that makes A
# worse by more than GATE_A points is rejected: exit 1, nothing written) and gated on B's
# (accepted; its merged model is evaluated like the others).
#   DATA=data/text-cl bash examples/text-cl/run.sh      # after fetch.sh
set -euo pipefail

MNEMO=${MNEMO:-mnemo}
here="$(cd "$(dirname "$0")" && pwd)"
DATA=${DATA:-data/text-cl}
OUT=${OUT:-out}
SEQ=${SEQ:-64}
B_DOCS=${B_DOCS:-120}          # Python documentation files used (sorted by name)
HELD=${HELD:-200}              # validation and test rows per domain
B_ROWS=${B_ROWS:-6000}         # B training rows (64 tokens each)
A_EPOCHS=${A_EPOCHS:-1}
B_EPOCHS=${B_EPOCHS:-1}
FISHER_ROWS=${FISHER_ROWS:-256}
LAMBDA=${LAMBDA:-1000}
CAPACITY=${CAPACITY:-2000}     # replay memory (sequences of A)
GATE_A=${GATE_A:-5}            # perplexity points A may lose before the gate refuses
SEED=${SEED:-1}
TOK="$here/tokenizer.json"
TRAIN="--optimizer adamw --lr 3e-3 --weight-decay 0 --batch-size 32 --seed $SEED -q"
METHODS=${METHODS:-"finetune ewc replay lora"}

say() { echo "text-cl: $*" >&2; }
num() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | head -n 1; }
mkdir -p "$OUT"

# Token data: every document packed into rows of $SEQ with <|endoftext|> between documents;
# rows shuffled (seeded), the first $HELD for validation, the next $HELD for test.
split() { # NAME FILES...
  local name=$1; shift
  "$MNEMO" data import text "$@" --tokenizer "$TOK" --seq-len "$SEQ" -q -o "$OUT/$name-all.st" >/dev/null
  "$MNEMO" data shuffle "$OUT/$name-all.st" --seed "$SEED" -q -o "$OUT/$name-shuf.st" >/dev/null
  "$MNEMO" data take "$OUT/$name-shuf.st" "$HELD" -q -o "$OUT/$name-val.st" >/dev/null
  "$MNEMO" data take "$OUT/$name-shuf.st" "$HELD" --skip "$HELD" -q -o "$OUT/$name-test.st" >/dev/null
  local n; n=$("$MNEMO" inspect "$OUT/$name-shuf.st" --json | sed -n 's/.*"input".*"shape":\[\([0-9]*\),.*/\1/p' | head -n 1)
  local rest=$((n - 2 * HELD))
  [ "${2:-}" = "" ] || true
  echo "$rest"
}
a_rest=$(split A "$DATA"/fortunes/*.txt)
mapfile -t b_files < <(ls "$DATA"/pydocs/*.txt | LC_ALL=C sort | head -n "$B_DOCS")
b_rest=$(split B "${b_files[@]}")
"$MNEMO" data take "$OUT/A-shuf.st" "$a_rest" --skip $((2 * HELD)) -q -o "$OUT/A-train.st" >/dev/null
b_take=$(( B_ROWS < b_rest ? B_ROWS : b_rest ))
"$MNEMO" data take "$OUT/B-shuf.st" "$b_take" --skip $((2 * HELD)) -q -o "$OUT/B-train.st" >/dev/null
say "A: $a_rest training rows, B: $b_take (of $b_rest), $HELD validation and test rows each"

ppl() { "$MNEMO" eval "$1" --data "$2" -q | num perplexity; }
results="$OUT/results.jsonl"; stages="$OUT/stages.jsonl"
: > "$results"; : > "$stages"
record() { # METHOD STAGE MODEL
  "$MNEMO" eval "$3" --data "$OUT/A-test.st" "$OUT/B-test.st" --stage "$2" --label "method=$1" -q \
    | grep '"task"' >> "$stages"
}

# Stage A, once for every method: replay-train with --replay-ratio 0 trains exactly as plain
# training does and fills the replay memory with A's sequences on the way.
"$MNEMO" init --arch "llama:$here/config.json" --seed "$SEED" -o "$OUT/init.st" >/dev/null
"$MNEMO" replay-train "$OUT/init.st" --data "$OUT/A-train.st" --epochs "$A_EPOCHS" $TRAIN \
  --buffer "$OUT/buffer.st" --capacity "$CAPACITY" --replay-ratio 0 -o "$OUT/A.st" >/dev/null
a_after_a=$(ppl "$OUT/A.st" "$OUT/A-test.st"); b_after_a=$(ppl "$OUT/A.st" "$OUT/B-test.st")
say "after A: perplexity A $a_after_a, B $b_after_a"
for m in $METHODS; do record "$m" 1 "$OUT/A.st"; done

for m in $METHODS; do
  gate=""
  case $m in
    finetune) "$MNEMO" train-ewc "$OUT/A.st" --data "$OUT/B-train.st" --epochs "$B_EPOCHS" $TRAIN -o "$OUT/$m.st" >/dev/null ;;
    ewc)
      "$MNEMO" data take "$OUT/A-train.st" "$FISHER_ROWS" -q -o "$OUT/A-fisher.st" >/dev/null
      "$MNEMO" fisher "$OUT/A.st" --data "$OUT/A-fisher.st" -q -o "$OUT/fisher-A.st" >/dev/null
      "$MNEMO" train-ewc "$OUT/A.st" --data "$OUT/B-train.st" --epochs "$B_EPOCHS" $TRAIN \
        --penalty "$OUT/fisher-A.st:$OUT/A.st" --lambda "$LAMBDA" -o "$OUT/$m.st" >/dev/null ;;
    replay) "$MNEMO" replay-train "$OUT/A.st" --data "$OUT/B-train.st" --epochs "$B_EPOCHS" $TRAIN \
        --buffer "$OUT/buffer.st" --capacity "$CAPACITY" --replay-ratio 0.5 -o "$OUT/$m.st" >/dev/null ;;
    lora)
      lg=(lora-gate "$OUT/A.st" --data "$OUT/B-train.st" --epochs "$B_EPOCHS" $TRAIN --targets all-linear
          --rank 16 --alpha 32 --dropout 0 --metric perplexity)
      set +e
      "$MNEMO" "${lg[@]}" --val "$OUT/A-val.st" --threshold "$GATE_A" -o "$OUT/lora-gate-A" > "$OUT/gate-A.json"
      code=$?
      set -e
      gate="gate on A: exit $code, A perplexity $(num baseline < "$OUT/gate-A.json") -> $(num score < "$OUT/gate-A.json"), accepted $(num accepted < "$OUT/gate-A.json")"
      say "$gate"
      "$MNEMO" "${lg[@]}" --val "$OUT/B-val.st" --threshold 0 --merged "$OUT/$m.st" -o "$OUT/lora-gate-B" > "$OUT/gate-B.json"
      ;;
  esac
  record "$m" 2 "$OUT/$m.st"
  a=$(ppl "$OUT/$m.st" "$OUT/A-test.st"); b=$(ppl "$OUT/$m.st" "$OUT/B-test.st")
  say "$m after B: perplexity A $a, B $b"
  printf '{"method":"%s","a_after_a":%s,"b_after_a":%s,"a_after_b":%s,"b_after_b":%s}\n' \
    "$m" "$a_after_a" "$b_after_a" "$a" "$b" >> "$results"
done

{
  echo "| method | A after A | B after A | A after B | B after B | A forgotten (points) |"
  echo "|---|---|---|---|---|---|"
  while read -r l; do
    m=$(echo "$l" | sed 's/.*"method":"\([^"]*\)".*/\1/')
    awk -v m="$m" -v aa="$(echo "$l" | num a_after_a)" -v ba="$(echo "$l" | num b_after_a)" \
        -v ab="$(echo "$l" | num a_after_b)" -v bb="$(echo "$l" | num b_after_b)" \
      'BEGIN { printf "| %s | %.1f | %.1f | %.1f | %.1f | %+.1f |\n", m, aa, ba, ab, bb, ab - aa }'
  done < "$results"
  [ -f "$OUT/gate-A.json" ] && echo && echo "lora-gate gated on A's validation perplexity (threshold $GATE_A): $(cat "$OUT/gate-A.json")"
} > "$OUT/table.md"
cat "$OUT/table.md" >&2
