#!/usr/bin/env bash
# The quickstart: creates .venv if missing, installs lwm into it, runs scripts/quickstart.py.
#   bash scripts/quickstart.sh [--output quickstart_out] [--clean] [--small]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e . || {
  echo "pip install -e . failed; check your network or install the dependencies in .venv" >&2
  exit 1
}
exec .venv/bin/python scripts/quickstart.py "$@"
