#!/usr/bin/env bash
# Crash safety: long train-ewc, replay-train and merge runs are killed with SIGKILL at
# random moments. After every kill:
#   - the output is either the previous file, byte for byte (the run had not finished), or
#     exactly the uninterrupted run's output (it had); `mnemo inspect` opens it (exit 0);
#   - the replay buffer likewise: the previous buffer, or the finished run's (and never the
#     new buffer beside the old output: the buffer is written after the output);
#   - a sharded merge output is the previous checkpoint, the new one, or refused when read
#     (exit 2: shards without their index), never a loadable mix of old and new shards;
#   - no file is left but the inputs, outputs and state, except the temporary files of the
#     killed writer (`.NAME.PID.XXXXXX.tmp`, PID dead), and the next run removes those;
#   - running the same command again (train-ewc and replay-train resume from --state) ends
#     with exactly the bytes of an uninterrupted run (and the same buffer).
#
#   TRIALS=60 MNEMO=target/release/mnemo scripts/crash_test.sh
# TRIALS is the total, split over the three commands. Exit 0 when every trial passed.
set -euo pipefail

TRIALS=${TRIALS:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MNEMO=${MNEMO:-$ROOT/target/release/mnemo}
case $MNEMO in /*) ;; *) MNEMO=$ROOT/$MNEMO ;; esac
SEED=${SEED:-$$}
RANDOM=$SEED
[ -x "$MNEMO" ] || { echo "crash_test: no binary at $MNEMO (make build)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mnemo-crash.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
m() { "$MNEMO" -q "$@"; }

fail() {
  echo "crash_test: FAIL ($1): $2 (killed after ${LAST_DELAY:-?} s; seed $SEED)" >&2
  exit 1
}
same() { cmp -s "$1" "$2"; }

# ---- fixture data, made big enough that a run takes a while --------------------------
fx=$ROOT/fixtures
copies=()
for _ in $(seq 30); do copies+=("$fx/mlp_data.safetensors"); done
m data concat "${copies[@]}" -o data.safetensors >/dev/null            # 1920 examples
m init --arch mlp:20-256-256-5 --seed 1 -o model.safetensors >/dev/null
m fisher model.safetensors --data data.safetensors -o fisher.safetensors >/dev/null
m init --arch mlp:20-256-256-5 --seed 2 -o prev.safetensors >/dev/null  # "the previous output"
for s in 1 2 3; do m init --arch mlp:784-1024-1024-10 --seed $s -o in$s.safetensors >/dev/null; done
m init --arch mlp:784-1024-1024-10 --seed 9 -o prev_merge.safetensors >/dev/null

EWC=(train-ewc model.safetensors --data data.safetensors --penalty fisher.safetensors:model.safetensors
     --lambda 10 --epochs 2 --batch-size 8 --optimizer adam --lr 1e-3 --state run.state
     --save-every 40 -o out.safetensors)
REPLAY=(replay-train model.safetensors --data data.safetensors --buffer buf.safetensors
        --replay-ratio 0.5 --epochs 2 --batch-size 8 --state replay.state --save-every 40
        -o rout.safetensors)
MERGE=(merge ties in1.safetensors in2.safetensors in3.safetensors --base in1.safetensors
       --density 0.3 -o mout.safetensors)
MERGE_SHARDED=(merge linear in1.safetensors in2.safetensors in3.safetensors
               --shard-size 2MB -o msharded)

# The buffer every replay trial starts from: one earlier run over the data.
m replay-train model.safetensors --data data.safetensors --buffer buf.safetensors --capacity 500 \
  --epochs 1 --batch-size 64 -o warm.safetensors >/dev/null
cp buf.safetensors buf0.safetensors

# ---- references: uninterrupted runs, timed --------------------------------------------
now() { date +%s.%N; }
reference() {  # reference NAME OUTPUT CMD...: runs CMD from the trial's starting point
  local name=$1 out=$2; shift 2
  local t0 t1; t0=$(now)
  m "$@" >/dev/null
  t1=$(now)
  cp -r "$out" "ref_$name"
  echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}' > "dur_$name"
}
rm -f run.state replay.state
reference ewc out.safetensors "${EWC[@]}"
rm -f run.state
reference replay rout.safetensors "${REPLAY[@]}"
cp buf.safetensors ref_buf.safetensors
cp buf0.safetensors buf.safetensors
rm -f replay.state
reference merge mout.safetensors "${MERGE[@]}"
# The sharded output's previous version: the same merge, other weights (linear, 1:2:3).
m merge linear in1.safetensors in2.safetensors in3.safetensors --weights 1,2,3 --shard-size 2MB \
  -o prev_sharded >/dev/null
rm -rf msharded; cp -r prev_sharded msharded
reference sharded msharded "${MERGE_SHARDED[@]}"
for n in ewc replay merge sharded; do echo "crash_test: uninterrupted $n run: $(cat dur_$n) s"; done
echo "crash_test: the sharded output: $(ls ref_sharded | wc -l) files (shards and index)"

# Files allowed in the folder besides those the trial started with.
only_stale_temps() {  # lists unexpected files (a live process's temp file included)
  local f pid
  for f in .*.tmp msharded/.*.tmp; do
    [ -e "$f" ] || continue
    pid=$(basename "$f" | sed -n 's/^\..*\.\([0-9][0-9]*\)\.[A-Za-z0-9]*\.tmp$/\1/p')
    if [ -z "$pid" ] || [ -d "/proc/$pid" ]; then echo "$f"; fi
  done
}
no_temps() { ls -A . msharded 2>/dev/null | grep -E '\.tmp$' || true; }

# Starts CMD, kills it with SIGKILL after a random delay in [0, 1.2 × its duration];
# sets KILLED=1 when it was still running.
kill_at_random() {
  local dur=$1; shift
  local delay
  delay=$(awk -v r="$RANDOM" -v d="$dur" 'BEGIN{printf "%.3f", r / 32767 * d * 1.2}')
  "$MNEMO" -q "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep "$delay"
  if kill -9 "$pid" 2>/dev/null; then KILLED=1; else KILLED=0; fi
  wait "$pid" 2>/dev/null || true
  LAST_DELAY=$delay
}

pass=0; killed_total=0; mid_write=0; between=0
trial() {  # trial KIND N
  local kind=$1 i=$2 what="$1 trial $2"
  case $kind in
  ewc)
    rm -f run.state; cp prev.safetensors out.safetensors
    kill_at_random "$(cat dur_ewc)" "${EWC[@]}"
    if same out.safetensors prev.safetensors; then :;
    elif same out.safetensors ref_ewc; then :;
    else fail "$what" "out.safetensors is neither the previous output nor the finished run's"; fi
    m inspect out.safetensors >/dev/null || fail "$what" "inspect out.safetensors"
    [ ! -e run.state ] || m inspect run.state >/dev/null || fail "$what" "the state file does not open"
    [ -z "$(only_stale_temps)" ] || fail "$what" "left $(only_stale_temps)"
    if [ -n "$(no_temps)" ]; then mid_write=$((mid_write + 1)); fi
    # Resume: the same command again gives the uninterrupted run's bytes.
    m "${EWC[@]}" >/dev/null || fail "$what" "resume failed"
    same out.safetensors ref_ewc || fail "$what" "resumed output differs from the uninterrupted run"
    ;;
  replay)
    rm -f replay.state; cp prev.safetensors rout.safetensors; cp buf0.safetensors buf.safetensors
    kill_at_random "$(cat dur_replay)" "${REPLAY[@]}"
    if same buf.safetensors buf0.safetensors; then :;
    elif same buf.safetensors ref_buf.safetensors; then
      same rout.safetensors ref_replay || fail "$what" "new buffer beside an old output"
    else fail "$what" "buf.safetensors is neither the previous buffer nor the finished run's"; fi
    if same rout.safetensors prev.safetensors; then :;
    elif same rout.safetensors ref_replay; then :;
    else fail "$what" "rout.safetensors is neither the previous output nor the finished run's"; fi
    m inspect rout.safetensors >/dev/null || fail "$what" "inspect rout.safetensors"
    m inspect buf.safetensors >/dev/null || fail "$what" "inspect buf.safetensors"
    [ ! -e replay.state ] || m inspect replay.state >/dev/null || fail "$what" "the state file does not open"
    [ -z "$(only_stale_temps)" ] || fail "$what" "left $(only_stale_temps)"
    if [ -n "$(no_temps)" ]; then mid_write=$((mid_write + 1)); fi
    if same buf.safetensors ref_buf.safetensors; then
      # The run had finished (the buffer is written last). Running it again resumes from
      # the finished state: the same weights and buffer tensors, but the provenance of
      # both now records the buffer file as it is (the new one): compare tensors only.
      m "${REPLAY[@]}" >/dev/null || fail "$what" "rerun failed"
      "$MNEMO" -q diff rout.safetensors ref_replay >/dev/null || fail "$what" "rerun weights differ"
      "$MNEMO" -q diff buf.safetensors ref_buf.safetensors >/dev/null || fail "$what" "rerun buffer differs"
    else
      m "${REPLAY[@]}" >/dev/null || fail "$what" "resume failed"
      same rout.safetensors ref_replay || fail "$what" "resumed output differs from the uninterrupted run"
      same buf.safetensors ref_buf.safetensors || fail "$what" "resumed buffer differs from the uninterrupted run's"
    fi
    ;;
  merge)
    cp prev_merge.safetensors mout.safetensors
    kill_at_random "$(cat dur_merge)" "${MERGE[@]}"
    if same mout.safetensors prev_merge.safetensors; then :;
    elif same mout.safetensors ref_merge; then :;
    else fail "$what" "mout.safetensors is neither the previous output nor the finished run's"; fi
    m inspect mout.safetensors >/dev/null || fail "$what" "inspect mout.safetensors"
    for f in in1 in2 in3; do m inspect $f.safetensors >/dev/null || fail "$what" "input $f"; done
    [ -z "$(only_stale_temps)" ] || fail "$what" "left $(only_stale_temps)"
    if [ -n "$(no_temps)" ]; then mid_write=$((mid_write + 1)); fi
    m "${MERGE[@]}" >/dev/null || fail "$what" "rerun failed"
    same mout.safetensors ref_merge || fail "$what" "rerun differs"
    ;;
  sharded)
    rm -rf msharded; cp -r prev_sharded msharded
    kill_at_random "$(cat dur_sharded)" "${MERGE_SHARDED[@]}"
    if "$MNEMO" -q inspect msharded >/dev/null 2>&1; then
      "$MNEMO" -q diff msharded prev_sharded >/dev/null 2>&1 \
        || "$MNEMO" -q diff msharded ref_sharded >/dev/null 2>&1 \
        || fail "$what" "msharded opens but is neither the previous checkpoint nor the new one"
    else
      [ $? -eq 2 ] || fail "$what" "inspect msharded: unexpected exit"
      between=$((between + 1))
    fi
    [ -z "$(only_stale_temps)" ] || fail "$what" "left $(only_stale_temps)"
    if [ -n "$(no_temps)" ]; then mid_write=$((mid_write + 1)); fi
    m "${MERGE_SHARDED[@]}" >/dev/null || fail "$what" "rerun failed"
    "$MNEMO" -q diff msharded ref_sharded >/dev/null || fail "$what" "rerun differs"
    ;;
  esac
  # The next writer of each target has removed the killed writer's temp files.
  [ -z "$(no_temps)" ] || fail "$what" "temporary files left after the rerun: $(no_temps)"
  killed_total=$((killed_total + KILLED))
  pass=$((pass + 1))
}

kinds=(ewc replay merge sharded)
per=$(( (TRIALS + 3) / 4 ))
for kind in "${kinds[@]}"; do
  k0=$killed_total
  for i in $(seq "$per"); do trial "$kind" "$i"; done
  echo "crash_test: $kind: $per trials, $((killed_total - k0)) killed mid-run"
done
echo "crash_test: $pass trials passed ($killed_total killed mid-run, $mid_write of them during a write," \
  "$between between two shards; seed $SEED)"
