#!/usr/bin/env python
"""Time SAM ViT-B's image encoder at 1024x1024: FP32 eager vs every Linear as the bundle's Int8Linear.

Why: the per-kernel numbers of ``bench_int8_kernels.py`` say how much faster the int8 GEMMs are;
this says what that buys end to end, where attention, LayerNorm, GELU and the conv neck stay FP32.
Random weights (``build_sam_vit_b(checkpoint=None)``) are fine for timing.

Usage::

    .venv/bin/python scripts/bench_int8_encoder.py --out bench_int8_encoder.json [--threads 2]
        [--repeats 3] [--backend auto|qlinear_dynamic|int_mm]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monai_bundle"))

from scripts.int8_runtime import Int8Linear  # noqa: E402  (bundle package, needs the path above)


def swap_linears(model: nn.Module, backend: str) -> int:
    """Replace every nn.Linear in ``model`` by Int8Linear (per-channel weights); return the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear.from_float(child, per_channel=True, backend=backend))
                count += 1
    return count


def time_interleaved(models: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> tuple[dict, dict]:
    """One warm-up pass each, then ``repeats`` rounds timing every model in turn (seconds).

    Round-robin because this VM's speed drifts (CPU steal, other jobs): each round exposes
    both variants to the same conditions. Also returns each model's output.
    """
    outs: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            outs[name] = model(x)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                outs[name] = model(x)
                times[name].append(time.perf_counter() - t0)
                print(f"{name}: {times[name][-1]:.3f} s", flush=True)
    return times, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write the measurements to")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=("auto", "qlinear_dynamic", "int_mm"))
    args = ap.parse_args()

    from segment_anything import build_sam_vit_b

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = build_sam_vit_b(checkpoint=None).image_encoder.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))

    int8_encoder = copy.deepcopy(encoder)
    n_linear = swap_linears(int8_encoder, args.backend)
    load_before = os.getloadavg()
    times, outs = time_interleaved({"fp32": encoder, "int8": int8_encoder}, x, args.repeats)
    fp32_times, int8_times, ref, out = times["fp32"], times["int8"], outs["fp32"], outs["int8"]

    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "input": [1, 3, 1024, 1024],
        "backend": args.backend,
        "int8_linear_layers": n_linear,
        "fp32_s": fp32_times,
        "int8_s": int8_times,
        "fp32_median_s": statistics.median(fp32_times),
        "int8_median_s": statistics.median(int8_times),
        "speedup": statistics.median(fp32_times) / statistics.median(int8_times),
        "loadavg_before_after": [load_before, os.getloadavg()],  # >threads means other jobs competed
        "output_rel_l2_error": float((out - ref).norm() / ref.norm()),
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_s")}, indent=2))


if __name__ == "__main__":
    main()
