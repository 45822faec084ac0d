#!/usr/bin/env bash
# `mnemo log mlflow` against a real MLflow tracking server, run by `make test` (through
# tests/log_mlflow_real.rs) and `make mlflow-check`. MLflow comes from the logging venv
# (scripts/logging_venv.sh, pinned in scripts/logging-requirements.txt), or from $MLFLOW_VENV
# (installed there when missing). Starts `mlflow server` on 127.0.0.1 with a temporary SQLite
# backend store, pipes a real `mnemo train-ewc` run on the fixtures through `mnemo log mlflow
# --tee` into `mnemo drift`, then asks the server's REST API what arrived: the experiment,
# the run's name, status and tags, and every metric's full history against the stream
# itself. A second run fed an invalid line must end FAILED. Prints one JSON summary line;
# exit 0 when everything matched.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mnemo="${MNEMO:-$root/target/release/mnemo}"
[ -x "$mnemo" ] || { echo "mlflow_check: no $mnemo (run cargo build --release, or set MNEMO)" >&2; exit 2; }

if [ -n "${MLFLOW_VENV:-}" ]; then
    MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
    venv="$MLFLOW_VENV"
    if ! "$venv/bin/python" -c "import mlflow, sys; sys.exit(mlflow.__version__ != '$MLFLOW_VERSION')" 2>/dev/null; then
        echo "mlflow_check: installing mlflow==$MLFLOW_VERSION into $venv" >&2
        "${PYTHON:-python3}" -m venv "$venv" >&2
        "$venv/bin/python" -m pip install -q "mlflow==$MLFLOW_VERSION" >&2
    fi
    py="$venv/bin/python"
else
    py="$("$root/scripts/logging_venv.sh")"
    venv="$(dirname "$(dirname "$py")")"
fi
MLFLOW_VERSION="$("$py" -c 'import mlflow; print(mlflow.__version__)')"

tmp="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
uri="http://127.0.0.1:$port"
"$venv/bin/mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
    --backend-store-uri "sqlite:///$tmp/mlflow.db" --default-artifact-root "$tmp/artifacts" \
    >"$tmp/server.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    if "$py" -c "import urllib.request; urllib.request.urlopen('$uri/health', timeout=1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$tmp/server.log" >&2
        echo "mlflow_check: the server did not start" >&2
        exit 2
    fi
    sleep 0.5
done

# Task 1's Fisher, then EWC on task 2, logged live; the URI comes from the environment
# (layered configuration), the stream goes on to drift detection.
"$mnemo" fisher fixtures/mlp.safetensors --arch mlp:20-16-16-5 --data fixtures/mlp_data.safetensors \
    -o "$tmp/fisher1.safetensors" >/dev/null
set +e
"$mnemo" train-ewc fixtures/mlp.safetensors --arch mlp:20-16-16-5 --data fixtures/mh_b_data.safetensors \
    --penalty "$tmp/fisher1.safetensors:fixtures/mlp.safetensors" --lambda 100 --epochs 5 \
    --batch-size 16 --lr 0.01 --log-every 2 -o "$tmp/model2.safetensors" \
  | tee "$tmp/train.jsonl" \
  | MNEMO_LOG_MLFLOW_URI="$uri" "$mnemo" log mlflow --experiment mnemo-check --run-name train-ewc \
      --tag fixture=mh_b --tee \
  | tee "$tmp/passed.jsonl" \
  | "$mnemo" drift --field task_loss --detector page-hinkley >/dev/null
codes=("${PIPESTATUS[@]}")
set -e
[ "${codes[0]}" = 0 ] && [ "${codes[2]}" = 0 ] || { echo "mlflow_check: pipeline exit codes ${codes[*]}" >&2; exit 2; }
cmp "$tmp/train.jsonl" "$tmp/passed.jsonl"

# A stream with an invalid line: exit 2 and a FAILED run.
set +e
printf '{"loss":1}\nnot json\n' | "$mnemo" log mlflow --uri "$uri" --experiment mnemo-check --run-name bad >/dev/null 2>"$tmp/bad.err"
bad=$?
set -e
[ "$bad" = 2 ] || { echo "mlflow_check: the invalid stream exited $bad" >&2; exit 2; }

"$py" - "$uri" "$tmp/train.jsonl" "$MLFLOW_VERSION" <<'EOF'
import json, sys, urllib.parse, urllib.request

uri, stream, version = sys.argv[1], sys.argv[2], sys.argv[3]

def get(path, **q):
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(q)}") as r:
        return json.load(r)

def post(path, body):
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

exp = get("experiments/get-by-name", experiment_name="mnemo-check")["experiment"]
runs = post("runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
by_name = {r["info"]["run_name"]: r for r in runs}
assert set(by_name) == {"train-ewc", "bad"}, by_name.keys()
run, bad = by_name["train-ewc"], by_name["bad"]
assert run["info"]["status"] == "FINISHED", run["info"]
assert bad["info"]["status"] == "FAILED", bad["info"]
assert run["info"]["end_time"] >= run["info"]["start_time"]
tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
assert tags["mnemo.version"], tags
assert tags["mnemo.command"].startswith("mnemo train-ewc fixtures/mlp.safetensors"), tags
assert tags["fixture"] == "mh_b" and tags["mnemo.source"] == "<stdin>", tags
assert tags["mlflow.runName"] == "train-ewc", tags

# Every number of every line, at its step, in the run's metric histories.
lines = [json.loads(l) for l in open(stream)]
expected = {}
for i, rec in enumerate(lines, 1):
    ev = rec["event"]
    step = rec["step"] if ev == "step" else rec["epoch"] if ev == "epoch" else i
    for k, v in rec.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            expected.setdefault(f"{ev}/{k}", []).append((step, float(v)))
keys = {m["key"] for m in run["data"]["metrics"]}
assert keys == set(expected), sorted(keys ^ set(expected))
n = 0
for key, want in expected.items():
    hist = get("metrics/get-history", run_id=run["info"]["run_id"], metric_key=key)["metrics"]
    got = sorted((m["step"], m["value"]) for m in hist)
    assert got == sorted(want), (key, got, want)
    n += len(got)
epochs = [r for r in lines if r["event"] == "epoch"]
print(json.dumps({
    "mlflow": version, "uri": uri, "experiment_id": exp["experiment_id"],
    "run": run["info"]["run_id"], "status": run["info"]["status"], "lines": len(lines),
    "metric_keys": len(expected), "metric_values": n, "epochs": len(epochs),
    "tags_checked": ["mnemo.version", "mnemo.command", "mnemo.source", "fixture", "mlflow.runName"],
    "failed_run": bad["info"]["status"], "tee_identical": True,
}))
EOF
