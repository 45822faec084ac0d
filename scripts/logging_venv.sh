#!/usr/bin/env bash
# The venv with the real logging backends (scripts/logging-requirements.txt: mlflow, wandb,
# tensorboard), created when missing or when the requirements changed, and cached outside
# the work tree so fresh clones on the same machine (CI) reuse it:
# $LOGGING_VENV (not MNEMO_*: mnemo reads those as settings), default ${XDG_CACHE_HOME:-~/.cache}/mnemo/logging-venv.
# Prints the venv's python on stdout. With --check it installs nothing and exits 1 when the
# venv is missing or stale (the tests use this to find it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOGGING_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mnemo/logging-venv}"
req="$root/scripts/logging-requirements.txt"
py="$venv/bin/python"
want="$(sha256sum "$req" | cut -c1-16)"
stamp="$venv/.mnemo-stamp"

if [ -x "$py" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$py"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "logging_venv.sh: no venv with scripts/logging-requirements.txt at $venv (run scripts/logging_venv.sh)" >&2
    exit 1
fi
echo "logging_venv.sh: installing scripts/logging-requirements.txt into $venv" >&2
start=$(date +%s)
if [ -e "$venv" ]; then
    [ -f "$venv/pyvenv.cfg" ] || { echo "logging_venv.sh: $venv exists and is not a venv" >&2; exit 2; }
    rm -rf "$venv"
fi
mkdir -p "$(dirname "$venv")"
"${PYTHON:-python3}" -m venv "$venv" >&2
"$py" -m pip install -q --disable-pip-version-check -r "$req" >&2
echo "$want" > "$stamp"
echo "logging_venv.sh: installed in $(( $(date +%s) - start )) s" >&2
echo "$py"
