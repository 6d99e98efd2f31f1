#!/usr/bin/env python
"""In-domain accuracy on JSRT: stage 0 -> stage 1 (FP32) -> stage 2 (INT8), split by image, test split unseen.

Runs the same pipeline as `adaqat pipeline` on ../shared/data/jsrt_scr_224 and writes the numbers the
engine issue asks for (test Dice of stage 1 FP32 and stage 2 INT8 per prompt mode, the Wilcoxon test,
the difference in Dice points) to a JSON file beside the full report.

    .venv/bin/python scripts/benchmark_jsrt.py --out runs/jsrt [--epochs 60 20 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the adaqat tools package of this checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "jsrt_scr_224"))
    parser.add_argument("--out", default="runs/jsrt")
    parser.add_argument("--epochs", type=int, nargs=3, default=[60, 20, 10])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from adaqat.pipeline import PipelineSettings, run_pipeline
    from scripts.atomic import atomic_write_text

    settings = PipelineSettings(data=args.data, out=args.out, epochs=tuple(args.epochs), batch_size=args.batch_size,
                                split_by="image", seed=args.seed)
    start = time.time()
    report_md = run_pipeline(settings)
    report = json.loads((report_md.parent / "report.json").read_text())
    dice = {run: summary["metrics"]["dice"]["mean"] for run, summary in report["metrics"].items()}
    result = {
        "data": args.data, "split": "by image, 70/15/15, seed %d" % args.seed, "epochs": args.epochs,
        "test_dice": dice,
        "int8_minus_fp32_dice_points": {mode: 100 * (dice[f"int8_{mode}"] - dice[f"fp32_{mode}"]) for mode in settings.prompt_modes},
        "wilcoxon_int8_vs_fp32": report["wilcoxon_int8_vs_fp32"],
        "file_bytes": report["file_bytes"], "stages": report["stages"], "wall_seconds": time.time() - start,
        "command": " ".join(["python", "scripts/benchmark_jsrt.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    atomic_write_text(Path(args.out) / "jsrt_benchmark.json", json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("test_dice", "int8_minus_fp32_dice_points")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
