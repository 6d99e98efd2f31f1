#!/usr/bin/env python
"""How reproducible the two-pass prompt is in one runtime: the torch route against itself, input + tiny noise.

    .venv/bin/python scripts/measure_two_pass_stability.py [--model M] [--sigma 1e-4] --out runs/two_pass_stability.json

Why: the torch-free predictor must give the torch route's masks (Dice >= 0.995 per image). On images the model is
unsure of, the two-pass prompt turns the first mask into a box, and a box edge moves by a low-resolution pixel
when a few logits cross zero; this measures how often that happens with no second runtime at all, by adding
Gaussian noise of ``sigma`` (1e-4 = 1/40 of an 8-bit grey level) to each image of a folder. Raw masks (logits > 0,
before the clean-up), the shipped INT8 model in eager PyTorch by default, every image of the embedded CC BY sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monai_bundle"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "monai_bundle" / "models" / "model_int8.pt"))
    parser.add_argument("--images", default=str(REPO / "sample_data" / "cxr_ccby_512" / "images"))
    parser.add_argument("--sigma", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/two_pass_stability.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from scripts.data.cxr_io import read_cxr
    from scripts.evaluation.metrics import dice_score
    from scripts.model_files.load import load_model

    network = load_model(args.model, prompt_mode="two_pass", runtime="eager")
    rng = np.random.default_rng(args.seed)
    dice = {}
    for path in sorted(Path(args.images).glob("*.png")):
        image, _ = read_cxr(str(path))
        x = torch.from_numpy(image)[None, None].float()
        noise = torch.from_numpy(rng.normal(0.0, args.sigma, image.shape).astype(np.float32))[None, None]
        with torch.inference_mode():
            a, b = network(x)[0, 0] > 0, network(x + noise)[0, 0] > 0
        dice[path.stem] = dice_score(a.numpy(), b.numpy())
    values = list(dice.values())
    result = {"model": args.model, "images": args.images, "sigma": args.sigma, "n": len(values),
              "min": min(values), "mean": float(np.mean(values)), "below_0995": sum(v < 0.995 for v in values),
              "worst": sorted(dice.items(), key=lambda kv: kv[1])[:8], "per_image": dice}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"two-pass vs itself + N(0, {args.sigma}) noise, {len(values)} images: min Dice {result['min']:.4f}, "
          f"mean {result['mean']:.5f}, below 0.995: {result['below_0995']}; worst {result['worst'][:4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
