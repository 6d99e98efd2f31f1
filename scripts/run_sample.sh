#!/usr/bin/env bash
# The main job on the embedded CC BY sample: stage 0 (small SAM trained fully), stage 1 (AdaLoRA),
# stage 2 (INT8 QAT), evaluation and report in runs/sample/report.md. Extra arguments go to
# `adaqat pipeline` (e.g. --checkpoint sam_vit_b_01ec64.pth --arch vit_b to start from your SAM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/adaqat pipeline --data sample_data/cxr_ccby_512 --out runs/sample --install-models "$@"
