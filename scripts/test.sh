#!/usr/bin/env bash
# The test command (README and CI run exactly this). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${R2F_VENV:-.venv}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 R2F_NO_PROGRESS=1
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); treating as failure" >&2
  exit 1
fi
exit "$rc"
