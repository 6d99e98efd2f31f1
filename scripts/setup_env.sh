#!/usr/bin/env bash
# Make (or reuse) the project's virtual environment at .venv and install the engine into it.
# torch is installed first and pinned: unpinned, pip may pull another multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.adaqat-installed
want=$(cat setup.py scripts/setup_env.sh | md5sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# --no-cache-dir: the 3 GB of wheels would stay in ~/.cache/pip; the other venvs hard-link this install instead
.venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,bench,study]"
echo "$want" > "$stamp"
