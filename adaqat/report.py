"""The main job's report: metrics per model and prompt, Wilcoxon INT8 vs FP32, parameters, sizes, overlays."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from scripts.atomic import atomic_write_text
from scripts.data.cxr_io import read_cxr, read_mask
from scripts.data.datasets import select_split
from scripts.data.mask_write import default_mask_name
from scripts.evaluation.metrics import compare_prediction_sets, read_metrics_csv

from adaqat.bundle_runner import run_bundle
from adaqat.overlays import save_overlay_grid

METRICS = ("dice", "iou", "nsd", "hd95", "assd")


def _fmt(stat: dict[str, float], percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    return f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}"


def pick_cases(metrics_csv: str | Path) -> dict[str, str]:
    """Worst, median and best image ids of a per-image metrics CSV, by Dice."""
    rows = read_metrics_csv(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv}: no images")
    ordered = sorted(rows, key=lambda k: rows[k]["dice"])
    return {"worst": ordered[0], "median": ordered[len(ordered) // 2], "best": ordered[-1]}


def case_items(model_path: str, picks: dict[str, str], test_items: dict[str, dict[str, Any]],
               caption: str = "") -> list[dict[str, Any]]:
    """Overlay items (image, prediction, reference) of the picked test images for one model (two-pass prompt).

    The masks come from the bundle's inference config, so they are exactly what ``adaqat infer`` writes.
    """
    images = [test_items[case]["image"] for case in picks.values()]
    with tempfile.TemporaryDirectory(prefix="adaqat-cases-") as out:
        # eager: a few images do not pay for an ONNX export
        run_bundle(["inference"], {"dataset_dir": images, "output_dir": out, "model_path": str(model_path),
                                   "prompt_mode": "two_pass", "runtime": "eager"}, workflow_type="infer")
        items = []
        for rank, case in picks.items():
            image, _ = read_cxr(test_items[case]["image"])
            label = read_mask(test_items[case]["label"], expected_shape=image.shape)
            pred = read_mask(Path(out) / default_mask_name(test_items[case]["image"]), expected_shape=image.shape)
            items.append({"image": image, "pred": pred, "label": label, "id": f"{caption}{rank}: {case}"})
    return items


def overlay_cases(out: Path, models: dict[str, str], eval_dir: Path, settings: Any, ranking_run: str = "int8_two_pass") -> list[Path]:
    """Best, median and worst test images (by ``ranking_run`` Dice), each model's prediction drawn on them."""
    picks = pick_cases(eval_dir / f"{ranking_run}.csv")
    test = {Path(item["image"]).stem: item for item in select_split(settings.data, "test", seed=settings.seed, by=settings.split_by, limit=settings.limit)}
    written = []
    for name, path in models.items():
        grid = out / f"overlays_{name}.png"
        save_overlay_grid(case_items(path, picks, test), grid, cols=3)
        written.append(grid)
    return written


def what_runs(int8_model: str | Path) -> list[str]:
    """The numerics of the models scored above, read from the INT8 file (not restated from a config)."""
    meta = torch.load(int8_model, map_location="cpu", weights_only=True, mmap=True).get("meta", {})
    qat, arch = meta.get("qat", {}), meta.get("arch", {})
    activations = {"dynamic_per_tensor": "quantized at run time, dynamic per-tensor asymmetric 7-bit (uint8 codes 0..127, one range per image), "
                                         "and simulated that way in stage 2",
                   None: "quantized at run time, dynamic per-tensor asymmetric 7-bit, but NOT simulated in stage 2 "
                         "(weights-only QAT, the paper's recipe)"}
    return ["## What runs", "",
            f"- SAM `{arch.get('embed_dim')}`-wide, {arch.get('depth')} blocks, input {arch.get('image_size')} px; outputs: "
            f"logits at SAM's {arch.get('image_size', 0) // 4} px grid, upsampled to the image; mask = sigmoid > 0.5, "
            "the two largest components, holes filled.",
            "- FP32 model: float32 everywhere, adapters merged into the encoder weights.",
            f"- INT8 model: Linear weights int8, symmetric, {'per channel' if qat.get('per_channel', True) else 'per tensor'} "
            f"(scale max|w|/127); kept float: {', '.join(f'`{p}`' for p in qat.get('keep_float', [])) or 'nothing'}; "
            f"inputs of the INT8 layers {activations.get(qat.get('activations'), 'as recorded: ' + str(qat.get('activations')))}."]


def write_report(out: Path, info: dict[str, Any], models: dict[str, str], eval_dir: Path, settings: Any) -> Path:
    """Write ``report.json`` and ``report.md`` in ``out``; return the Markdown path."""
    summaries = {p.name.removesuffix("_summary.json"): json.loads(p.read_text()) for p in sorted(eval_dir.glob("*_summary.json"))}
    wilcoxon = {}
    for mode in settings.prompt_modes:
        a, b = eval_dir / f"int8_{mode}.csv", eval_dir / f"fp32_{mode}.csv"
        if a.exists() and b.exists():
            wilcoxon[mode] = compare_prediction_sets(a, b, "dice", name_a="int8", name_b="fp32")
    sizes = {name: Path(path).stat().st_size for name, path in models.items()}
    overlays = overlay_cases(out, models, eval_dir, settings)
    report = {"stages": info["stages"], "total_seconds": info.get("total_seconds"), "metrics": summaries,
              "wilcoxon_int8_vs_fp32": wilcoxon, "file_bytes": sizes,
              "size_ratio_fp32_over_int8": sizes["fp32"] / sizes["int8"], "overlays": [str(p) for p in overlays]}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))

    lines = ["# AdaLoRA-QAT run report", "", f"Data: `{settings.data}` (test split, split by {settings.split_by}, seed {settings.seed}). "
             f"Architecture: `{settings.arch}`. Total time: {info.get('total_seconds', 0):.0f} s. "
             f"Started from `{info.get('foundation')}`" + (" (model `foundation`: that SAM before adaptation, scored the "
             "same way)." if "foundation" in {r.partition('_')[0] for r in summaries} else " (stage 0, trained here)."), "",
             "## Test metrics (Dice/IoU/NSD in %, HD95/ASSD in px, mean ± std)", "",
             "| model | prompt | n | Dice | IoU | NSD@2px | HD95 | ASSD |", "|---|---|---|---|---|---|---|---|"]
    for run, summary in summaries.items():
        model, _, prompt = run.partition("_")
        m = summary["metrics"]
        lines.append(f"| {model} | {prompt} | {summary['n_images']} | " + " | ".join(
            _fmt(m[k], k in ("dice", "iou", "nsd")) for k in METRICS) + " |")
    lines += ["", "## Wilcoxon signed-rank test, per-image Dice, INT8 vs FP32", "",
              "| prompt | n | statistic | p-value | median difference (points) |", "|---|---|---|---|---|"]
    for mode, w in wilcoxon.items():
        lines.append(f"| {mode} | {w['n']} | {w['statistic']:.1f} | {w['p_value']:.4f} | {100 * w['median_difference']:+.3f} |")
    lines += ["", "## Trainable parameters and model files", "",
              "Reductions on two bases: the whole model (all its parameters / trainable), and the paper's (its 16.6x: "
              "image-encoder parameters / trainable).", "",
              "| stage | trainable parameters | fewer than the whole model | paper's basis | seconds |", "|---|---|---|---|---|"]
    for stage, s in info["stages"].items():
        lines.append(f"| {stage} | {s['trainable']:,} | {s['model_params'] / s['trainable']:.1f}x | "
                     f"{s['encoder_params'] / s['trainable']:.1f}x | {s['seconds']:.0f} |")
    lines += ["", f"FP32 file: {sizes['fp32']:,} bytes; INT8 file: {sizes['int8']:,} bytes; "
              f"ratio {sizes['fp32'] / sizes['int8']:.2f}x (measured files).", "", *what_runs(models["int8"]), "",
              "## Overlays (green: reference, red: prediction)", ""]
    lines += [f"![{p.stem}]({p.name})" for p in overlays]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


