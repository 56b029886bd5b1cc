#!/usr/bin/env bash
# Creates (once) the Python virtual environment of kd's PyTorch package in .venv/ (git-ignored) and installs into it what
# the package and its tests need from PyPI: torch 2.x and TRL (the parity tests import TRL's own loss). Idempotent: an
# existing venv whose requirements import is left as is; pip downloads are cached in pip's cache (~/.cache/pip or
# $PIP_CACHE_DIR), so a second fresh clone does not download torch again. Then builds and installs the package
# (python/) into the venv against that torch, without build isolation.
#   KD_PYTHON   interpreter that creates the venv (default: python3)
#   KD_VENV     venv directory (default: .venv at the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${KD_PYTHON:-python3}"
VENV="${KD_VENV:-$PWD/.venv}"
if ! "$VENV/bin/python" -c "import torch, trl" >/dev/null 2>&1; then
  echo "kd setup: creating $VENV and installing torch + trl from PyPI (about 3 GB the first time)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install -q -r python/requirements-test.txt
fi
