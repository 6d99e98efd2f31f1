#!/usr/bin/env bash
# Make (or reuse) the MONAI Label environment at .venv-monailabel.
# monailabel 0.8.5 pins numpy<2 and pydicom<3, which the core .venv cannot take, so the backend gets
# its own environment; the core package never depends on monailabel. torch is installed first and
# pinned (PyPI's torchvision does not load beside other torch builds); the stamp (md5 of the pins and
# this script) makes a second call a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
venv=.venv-monailabel
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
stamp=$venv/.adaqat-installed
want=$(cat monailabel_app/requirements.txt scripts/setup_monailabel_env.sh | md5sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
# the core .venv's torch, hard-linked instead of unpacked a second time (5.5 GB); pip installs it when that fails
if [ -x .venv/bin/python ]; then
  .venv/bin/python scripts/link_torch.py "$venv" || true
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r monailabel_app/requirements.txt
"$venv/bin/python" -m pip check
# highdicom (DICOM SEG results) comes pinned in the requirements: 0.22.0, the last release that takes pydicom < 3
"$venv/bin/python" -c "import numpy, monailabel, monai, torchvision, segment_anything, peft, highdicom; assert numpy.__version__ < '2'"
echo "$want" > "$stamp"
echo "MONAI Label environment ready in $(( $(date +%s) - start )) s" >&2
