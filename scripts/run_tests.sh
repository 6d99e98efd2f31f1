#!/usr/bin/env bash
# The project's tests (unit + end-to-end on real JSRT images from ../shared/data). pytest's exit 5
# (no test collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
# the MONAI Label server tests run the server from its own environment (monailabel pins numpy<2)
bash scripts/setup_monailabel_env.sh || { echo "MONAI Label environment set-up failed" >&2; exit 1; }
.venv/bin/python -m pytest -q "$@" tests
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$rc"
