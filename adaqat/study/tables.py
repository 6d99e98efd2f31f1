"""The comparison's numbers: one row per protocol x method x prompt, paired tests, and CSV / JSON / Markdown.

Why here and not in the study runner: the tables only read what the runs wrote (each method's
``method.json``, ``perf.json`` and the evaluation's per-image CSV + summary from
:mod:`.metrics_handler`), so they can be rebuilt, tested and changed without training anything.
Metrics are never recomputed here; Wilcoxon tests go through :func:`.seg_metrics.wilcoxon_paired`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from scripts.atomic import atomic_write_text
from scripts.evaluation.metrics import METRIC_KEYS, compare_prediction_sets

from adaqat.study.methods import METHODS, PROTOCOLS

PROMPT_LABELS = {"box": "gt_box", "whole": "whole", "two_pass": "two_pass", "none": "none"}
BASELINE = "decoder_ft"
DEPLOYED_PROMPT = "two_pass"  # what a prompt-free method (the UNet) is compared with
CRITERIA = {"int8_p": 0.05, "int8_points": 0.5, "param_reduction": 16.6, "size_ratio": 2.24}
COLUMNS = ("protocol", "method", "label", "precision", "prompt", "n",
           *(f"{m}_{s}" for m in METRIC_KEYS for s in ("mean", "std")),
           "trainable", "reduction_vs_full", "epochs", "qat_epochs", "train_seconds",
           "file_bytes", "fp32_file_bytes", "size_ratio_vs_fp32", "latency_ms", "images_per_s", "peak_rss_mib",
           "p_vs_decoder_ft", "dice_diff_vs_decoder_ft", "p_vs_fp32_parent", "dice_diff_vs_fp32_parent", "n_paired",
           "keep_float")


def _eval_files(folder: Path, prompt: str) -> tuple[Path, Path]:
    return folder / "eval" / f"{prompt}.csv", folder / "eval" / f"{prompt}_summary.json"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def protocol_rows(protocol: str, root: Path, methods: Sequence[Any], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one protocol: ``methods`` are :class:`.study.Method` s, ``records`` their ``method.json`` (+ ``perf``)."""
    rows = []
    full = records.get("full_ft", {}).get("trainable")
    for method in methods:
        info = records[method.name]
        folder = root / method.name
        parent = records.get(method.parent) if method.parent else None
        file_bytes = Path(info["model"]).stat().st_size
        fp32_bytes = Path(parent["model"]).stat().st_size if parent else file_bytes
        perf = info.get("perf") or {}
        for prompt in method.prompts:
            csv_path, summary_path = _eval_files(folder, prompt)
            if not summary_path.is_file():
                raise FileNotFoundError(f"{summary_path}: evaluation of {method.name} ({prompt}) missing")
            summary = json.loads(summary_path.read_text())
            row: dict[str, Any] = {
                "protocol": protocol, "method": method.name, "label": method.label, "precision": method.precision,
                "prompt": PROMPT_LABELS[prompt], "n": summary["n_images"],
                "trainable": info.get("trainable"), "reduction_vs_full": (full / info["trainable"]) if full and info.get("trainable") else None,
                "epochs": info.get("epochs"), "qat_epochs": info.get("qat_epochs"), "train_seconds": info.get("seconds"),
                "file_bytes": file_bytes, "fp32_file_bytes": fp32_bytes, "size_ratio_vs_fp32": fp32_bytes / file_bytes,
                "latency_ms": 1000 * perf["latency_s"] if "latency_s" in perf else None,
                "images_per_s": perf.get("images_per_s"), "peak_rss_mib": perf.get("peak_rss_mib"),
                "keep_float": " ".join(info.get("keep_float", [])) or None,
            }
            for m in METRIC_KEYS:
                row[f"{m}_mean"] = summary["metrics"][m]["mean"]
                row[f"{m}_std"] = summary["metrics"][m]["std"]
            base_prompt = DEPLOYED_PROMPT if prompt == "none" else prompt
            if method.name != BASELINE and BASELINE in records:
                test = compare_prediction_sets(csv_path, _eval_files(root / BASELINE, base_prompt)[0], "dice", method.name,
                                               f"{BASELINE}:{base_prompt}")
                row["p_vs_decoder_ft"], row["dice_diff_vs_decoder_ft"] = test["p_value"], test["mean_difference"]
                row["n_paired"] = test["n"]
            if method.parent:
                test = compare_prediction_sets(csv_path, _eval_files(root / method.parent, prompt)[0], "dice", method.name,
                                               method.parent)
                row["p_vs_fp32_parent"], row["dice_diff_vs_fp32_parent"] = test["p_value"], test["mean_difference"]
                row["n_paired"] = test["n"]
            rows.append({k: row.get(k) for k in COLUMNS})
    return rows


def criteria(rows: Sequence[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]], method: str = "adalora_qat") -> dict[str, Any]:
    """The issue's acceptance checks for one protocol's AdaLoRA-QAT (swept list) rows.

    * INT8 not significantly worse than its FP32 parent, per prompt: p > 0.05, or it loses less than 0.5 mean Dice
      points (a significant *gain*, e.g. from QAT's extra epochs, passes);
    * trainable parameters: full fine-tuning / the route's largest stage (stage 1 or 2) >= 16.6;
    * measured files: FP32 parent / INT8 >= 2.24.
    """
    mine = [r for r in rows if r["method"] == method]
    if not mine:
        raise ValueError(f"no rows of {method!r} to check")
    per_prompt = {r["prompt"]: {"p": r["p_vs_fp32_parent"], "diff_points": 100 * r["dice_diff_vs_fp32_parent"],
                                "pass": r["p_vs_fp32_parent"] > CRITERIA["int8_p"]
                                or 100 * r["dice_diff_vs_fp32_parent"] > -CRITERIA["int8_points"]} for r in mine}
    route = max(records["adalora"]["trainable"], records[method]["trainable"])
    reduction = records["full_ft"]["trainable"] / route
    decoder = records.get("decoder_ft", {}).get("trainable")
    ratio = mine[0]["size_ratio_vs_fp32"]
    return {
        "int8_vs_fp32": per_prompt,
        "param_reduction": {"value": reduction, "route_trainable": route, "full_trainable": records["full_ft"]["trainable"],
                            "decoder_cap": records["full_ft"]["trainable"] / decoder if decoder else None,
                            "pass": reduction >= CRITERIA["param_reduction"]},
        "size_ratio": {"value": ratio, "pass": ratio >= CRITERIA["size_ratio"]},
    }


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def _pm(row: Mapping[str, Any], metric: str) -> str:
    scale = 100.0 if metric in ("dice", "iou", "nsd") else 1.0
    return f"{row[f'{metric}_mean'] * scale:.2f} ± {row[f'{metric}_std'] * scale:.2f}"


def _num(value: Any, fmt: str, empty: str = "–") -> str:
    value = _finite(value)
    return empty if value is None else format(value, fmt)


def _p(value: Any, diff: Any) -> str:
    if _finite(value) is None:
        return "–"
    return f"{value:.3g} ({100 * diff:+.2f})"


def markdown_tables(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Accuracy table (every method x prompt) and cost table (every method) of one protocol, as Markdown lines."""
    lines = ["| method | prompt | n | Dice % | IoU % | NSD@2px % | HD95 px | ASSD px | p vs decoder-only (Δ pts) | p vs FP32 parent (Δ pts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['prompt']} | {r['n']} | " + " | ".join(_pm(r, m) for m in METRIC_KEYS)
                     + f" | {_p(r['p_vs_decoder_ft'], r['dice_diff_vs_decoder_ft'])} | {_p(r['p_vs_fp32_parent'], r['dice_diff_vs_fp32_parent'])} |")
    lines += ["", "| method | precision | trainable params | fewer than full | epochs (stage 1 + QAT) | train s | file MB | FP32 / this file | CPU ms / image | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        epochs = "time-limited" if r["method"] == "unet" else f"{r['epochs']}" + (f" + {r['qat_epochs']}" if r["qat_epochs"] is not None else "")
        lines.append(f"| {r['label']} | {r['precision']} | {r['trainable']:,} | {_num(r['reduction_vs_full'], '.1f')}{'x' if r['reduction_vs_full'] else ''} | {epochs} | "
                     f"{_num(r['train_seconds'], '.0f')} | {r['file_bytes'] / 1e6:.2f} | {r['size_ratio_vs_fp32']:.2f}x | "
                     f"{_num(r['latency_ms'], '.1f')} | {_num(r['peak_rss_mib'], '.0f')} |")
    return lines


def _criteria_lines(check: Mapping[str, Any]) -> list[str]:
    def mark(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    lines = ["Acceptance checks (AdaLoRA-QAT INT8, swept float list):", ""]
    for prompt, c in check["int8_vs_fp32"].items():
        lines.append(f"- INT8 vs FP32 parent, {prompt}: p = {c['p']:.3g}, Δ = {c['diff_points']:+.2f} Dice points "
                     f"(p > {CRITERIA['int8_p']} or Δ > -{CRITERIA['int8_points']}): **{mark(c['pass'])}**")
    pr = check["param_reduction"]
    lines.append(f"- trainable parameters: full {pr['full_trainable']:,} / route {pr['route_trainable']:,} = "
                 f"{pr['value']:.2f}x (>= {CRITERIA['param_reduction']}): **{mark(pr['pass'])}**")
    if pr.get("decoder_cap") and pr["decoder_cap"] < CRITERIA["param_reduction"]:
        lines.append(f"  (at this SAM size the mask decoder + prompt encoder alone, trained by every SAM method here, already "
                     f"caps the reduction at {pr['decoder_cap']:.1f}x; for ViT-B see `adaqat stats --arch vit_b`)")
    sr = check["size_ratio"]
    lines.append(f"- measured files FP32 / INT8 = {sr['value']:.2f}x (>= {CRITERIA['size_ratio']}): **{mark(sr['pass'])}**")
    return lines


def write_results(out: Path, protocols: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any],
                  facts: Mapping[str, Any]) -> Path:
    """Write ``comparison.csv``, ``comparison.json`` and ``results.md`` in ``out``; return the Markdown path.

    ``protocols``: per protocol the study's metadata (``methods`` records, ``title``, ``plots``...).
    """

    all_rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    md = ["# Method comparison", "",
          f"Command: `{settings.get('command') or '(called from Python)'}`", "",
          f"Machine: {facts.get('cpu')}, {facts.get('cpu_count')} cores visible; Python {facts.get('python')}, "
          f"torch {facts.get('torch')}; latency measured with {settings.get('perf_threads')} threads, median of "
          f"{settings.get('perf_repeats')} runs after one warm-up, whole-image prompt, one image at the model's input size, "
          "each model in a fresh process. "
          f"Total study time {facts.get('total_seconds', 0):.0f} s.", "",
          f"Every method starts from the same foundation (`{settings.get('foundation')}`: a small SAM trained fully on the "
          f"JSRT training split), uses the same data, split and seed {settings.get('seed')}, and {settings.get('epochs')} "
          f"stage-1 epochs (early stopping as in the configs); the QAT rows add {settings.get('qat_epochs')} stage-2 epochs "
          "on top; PTQ trains nothing (0 trainable). The UNet trains for the wall-clock seconds AdaLoRA stage 1 + QAT "
          "took on that protocol. Prompts: gt_box = the reference mask's bounding box, no jitter (the paper's protocol); "
          "whole = whole-image box; two_pass = whole image, then a box around the first mask; none = prompt-free UNet "
          "(compared with decoder-only at two_pass). p-values: Wilcoxon signed-rank on per-image Dice paired by image "
          "id; Δ = mean Dice difference in points. Trainable parameters are those the optimiser updates (AdaLoRA: all "
          "allocated slots at the initial rank; QAT rows: stage 2's).", ""]
    if settings.get("quick"):
        md += ["**Quick run** (CI's reduced form): a few images and one epoch per stage; the numbers only show the machinery works.", ""]
    for protocol, meta in protocols.items():
        root = out / protocol
        methods = [m for m in METHODS if m.name in meta["methods"]]
        rows = protocol_rows(protocol, root, methods, meta["methods"])
        all_rows += rows
        checks[protocol] = criteria(rows, meta["methods"])
        choice = meta.get("keep_float_choice", {})
        md += [f"## {PROTOCOLS[protocol]['title']}", "",
               f"Data `{meta['data']}`, split by {meta['split_by']}, test images: {rows[0]['n']}.", ""]
        md += markdown_tables(rows) + [""]
        md += [f"Float list chosen by the sensitivity sweep (validation split): `{' '.join(choice.get('keep_float', []))}` "
               f"(predicted ratio {_num(choice.get('predicted_ratio'), '.2f')}x).", ""]
        md += _criteria_lines(checks[protocol]) + [""]
        plots = meta.get("plots") or {}
        if plots:
            md += ["Plots:", ""] + [f"- {name}: ![{name}]({Path(path).relative_to(out)})" for name, path in plots.items()] + [""]
            if protocol == "jsrt":
                md += ["The JSRT overlay grid shows JSRT pixels (research-use licence): never commit it; the other plots hold no image data.", ""]
    atomic_write_text(out / "comparison.csv", _csv_text(all_rows))
    atomic_write_text(out / "comparison.json", json.dumps({"settings": dict(settings), "machine": dict(facts), "rows": all_rows,
                                                          "criteria": checks}, indent=2, default=str) + "\n")
    path = out / "results.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


__all__ = ["BASELINE", "COLUMNS", "CRITERIA", "PROMPT_LABELS", "criteria", "markdown_tables",
           "protocol_rows", "write_results"]
