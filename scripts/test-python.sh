#!/usr/bin/env bash
# The Python part of the test suite: builds and installs kd's PyTorch package (python/) into .venv/ against its torch
# (no build isolation), then runs its tests (python/tests: TRL parity, PyTorch-formula parity, gradcheck, layouts,
# errors, torch.compile, MiniLLM, the tiny-GPT smoke example). Fails on the first failing step.
# Usage: scripts/test-python.sh [pytest arguments]      (scripts/test.sh runs it after CTest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
VENV="${KD_VENV:-$PWD/.venv}"
export MAX_JOBS="${KD_JOBS:-$(nproc)}"
start=$(date +%s)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation ./python
echo "kd python: package built and installed in $(( $(date +%s) - start )) s" >&2
export TRL_EXPERIMENTAL_SILENCE=1
# From the repository root, so that python/ (the sources, without the compiled extension) is not on sys.path.
"$VENV/bin/python" -c "import kd_torch; print('kd_torch', kd_torch.__version__, 'torch', __import__('torch').__version__, 'simd', kd_torch.simd_isa())"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
