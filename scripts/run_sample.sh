#!/usr/bin/env bash
# The main job on the embedded CC BY sample: start from the shipped foundation (monai_bundle/models/foundation.pt,
# a small SAM trained on JSRT, as a user starts from a pretrained SAM), adapt it with AdaLoRA (stage 1) and INT8
# QAT (stage 2), evaluate the foundation before adaptation, the FP32 and the INT8 model; report in
# runs/sample/report.md. Extra arguments go to `adaqat pipeline` (e.g. --checkpoint sam_vit_b_01ec64.pth to start
# from your SAM, or --train-foundation --epochs 80 25 10 for the old from-scratch run with stage 0 on the sample).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/adaqat pipeline --data sample_data/cxr_ccby_512 --out runs/sample --epochs 80 12 4 "$@"
