#!/usr/bin/env bash
# Creates .venv if needed, installs lwm with its test extra, and runs the default (non-slow) test suite.
# LWM_LINT=1 (CI) runs `ruff check` (configured in pyproject.toml) first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
if [ "${LWM_LINT:-0}" = 1 ]; then
  .venv/bin/python -m ruff check .
fi
exec .venv/bin/python -m pytest "$@"
