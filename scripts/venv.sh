#!/usr/bin/env bash
# Create (if missing) the reference-tools virtualenv in <repo>/.venv and install
# scripts/requirements.txt into it. Idempotent: the pip install is skipped while
# .venv/.stamp is newer than requirements.txt. Prints the venv's python on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.stamp"
py="$venv/bin/python"

if [ ! -x "$py" ]; then
    echo "venv.sh: creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi

if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ]; then
    echo "venv.sh: installing $req" >&2
    "$py" -m pip install -q -r "$req" >&2
    touch "$stamp"
fi

echo "$py"
