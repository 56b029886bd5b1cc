#!/usr/bin/env bash
# Creates (once) the Python virtual environment of kd's PyTorch package, .venv/ at the repository root (git-ignored),
# and installs into it from PyPI what the package's build and tests need (python/requirements-test.txt: torch 2.x,
# TRL for the parity tests, pytest). Idempotent: a venv whose stamp matches the requirements file is left as is (no
# network, no import); pip's download cache (~/.cache/pip, or $PIP_CACHE_DIR) makes a re-creation on the same machine
# skip the ~3 GB of downloads. Called by scripts/setup.sh; the package itself is built by scripts/test-python.sh.
#   KD_PYTHON   interpreter that creates the venv (default: python3; Debian needs python3-venv, python3-dev)
#   KD_VENV     the venv directory (default: .venv at the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${KD_PYTHON:-python3}"
VENV="${KD_VENV:-$PWD/.venv}"
REQ=python/requirements-test.txt
STAMP="$VENV/.kd-requirements"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "kd setup: Python environment $VENV (torch + trl from PyPI: about 3 GB to download the first time)" >&2
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
"$VENV/bin/python" -c "import torch, trl, pytest" >/dev/null
echo "$want" > "$STAMP"
echo "kd setup: Python environment ready in $(( $(date +%s) - start )) s (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
