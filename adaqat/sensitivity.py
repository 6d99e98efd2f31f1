"""Selective precision, measured: how much Dice each layer group loses when it alone is quantized.

Why: the paper keeps the encoder's ``qkv`` in float by fiat. This module measures instead. It
quantizes one layer group at a time (post-training, with the QAT rounding rule of
:mod:`.quantizer`), scores Dice on the validation split (never the test split, so the choice
cannot see it), and picks the float-kept list for a size target from the measured drops and the
bytes each group saves in the real INT8 artefact (:mod:`.int8_export`).

Group names (stable; every layer ``apply_fake_quant`` would quantize is in exactly one):

* ``encoder.block{i}.qkv`` / ``.proj`` / ``.mlp``: attention input projection (fused or split
  q/k/v), attention output projection, and both MLP Linears of encoder block ``i``;
* ``decoder.layer{j}.self_attn`` / ``.cross_attn_token_to_image`` / ``.mlp`` /
  ``.cross_attn_image_to_token``: the parts of two-way transformer layer ``j`` (each attention
  group holds its q/k/v/out projections);
* ``decoder.final_attn``: the final token-to-image attention;
* ``decoder.hypernet{k}``: the hypernetwork MLP of mask output ``k`` (with single-mask output only
  ``hypernet0`` reaches the mask, so the others cost no Dice);
* ``decoder.iou_head``: the IoU prediction head (not used for the mask);
* ``other.<module>``: any other Linear (none in segment-anything's SAM; a safety net).

SAM's patch embedding and neck are convolutions, which the quantizer does not touch, so they form
no group. Outputs: ``sensitivity.json`` / ``.csv`` / ``.png`` (:func:`run_sweep`), a float list
for ``qat.keep_float`` (:func:`choose_keep_float`), and its INT8 artefact with measured size and
Dice next to the paper's list (:func:`check_keep_float`).
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from scripts.atomic import atomic_write_text, atomic_write_with
from scripts.data.cxr_io import stem
from scripts.evaluation.metrics import wilcoxon_paired
from scripts.model.factory import PAPER_KEEP_FLOAT
from scripts.model.sam import CheckpointError
from scripts.model_files.export import export_fp32, export_ptq_int8
from scripts.model_files.header import SAM_INT8, model_kind
from scripts.model_files.load import load_model
from scripts.quantization.fake_quant import apply_fake_quant, remove_fake_quant

from adaqat.bundle_runner import load_workflow

# Adapters train in float in stage 2 and are merged into their base weight by export_int8, so they
# never reach the artefact; they must still stay out of fake-quant (as in the paper's list),
# otherwise their Linears would be quantized and then vanish at the merge.
ADAPTER_PATTERN = "*lora_*"

# (regex on the module name, group name template). The regex match is the group's module prefix.
_RULES: tuple[tuple[str, str], ...] = (
    (r"image_encoder\.blocks\.(\d+)\.attn\.qkv", "encoder.block{0}.qkv"),
    (r"image_encoder\.blocks\.(\d+)\.attn\.proj", "encoder.block{0}.proj"),
    (r"image_encoder\.blocks\.(\d+)\.mlp", "encoder.block{0}.mlp"),
    (r"mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|mlp|cross_attn_image_to_token)",
     "decoder.layer{0}.{1}"),
    (r"mask_decoder\.transformer\.final_attn_token_to_image", "decoder.final_attn"),
    (r"mask_decoder\.output_hypernetworks_mlps\.(\d+)", "decoder.hypernet{0}"),
    (r"mask_decoder\.iou_prediction_head", "decoder.iou_head"),
)


def _group_of(name: str) -> tuple[str, str]:
    """(group name, module prefix) of a quantizable Linear called ``name``."""
    bare = name.removeprefix("sam.")
    for regex, template in _RULES:
        match = re.match(rf"(?:.*\.)?({regex})(?:\.|$)", bare)
        if match:
            return template.format(*match.groups()[1:]), match.group(1)
    return f"other.{bare}", bare


def quantizable_layers(network: nn.Module) -> list[str]:
    """Names of the Linears ``apply_fake_quant`` quantizes by default (asked of it, on a copy)."""
    return apply_fake_quant(copy.deepcopy(network), keep_float=[ADAPTER_PATTERN])


def layer_groups(network: nn.Module) -> dict[str, list[str]]:
    """Every quantizable layer of ``network`` in exactly one named group (see the module docstring)."""
    groups: dict[str, list[str]] = {}
    for name in quantizable_layers(network):
        groups.setdefault(_group_of(name)[0], []).append(name)
    return groups


def group_patterns(layers: Sequence[str]) -> list[str]:
    """``qat.keep_float`` globs that cover a group's layers, with their adapters and q/k/v splits.

    ``*<prefix>`` names the module, ``*<prefix>.*`` its children (``base_layer``, ``lora_*``,
    ``q``/``k``/``v``), so the globs work on the stage-2 network (adapters in place) as well as on
    the merged FP32 model; the dot stops ``blocks.1`` from matching ``blocks.10``.
    """
    prefixes = list(dict.fromkeys(_group_of(name)[1] for name in layers))
    return [p for prefix in prefixes for p in (f"*{prefix}", f"*{prefix}.*")]


def _bytes_saved(weight: torch.Tensor, per_channel: bool) -> int:
    """Bytes the artefact saves when this weight is int8 + float32 scales instead of float."""
    scales = weight.shape[0] if per_channel else 1
    return weight.numel() * (weight.element_size() - 1) - 4 * scales


def predicted_bytes(sweep: Mapping[str, Any], keep_float: Sequence[str]) -> int:
    """INT8 artefact size predicted for ``keep_float``: the measured all-quantized file plus, for
    each layer the globs keep float, the bytes its quantization would have saved."""
    size = int(sweep["int8_all_bytes"])
    for group in sweep["groups"].values():
        for layer, saved in group["layer_bytes_saved"].items():
            if any(fnmatch.fnmatchcase(layer, p) for p in keep_float):
                size += int(saved)
    return size


@contextmanager
def quantized(network: nn.Module, layers: Sequence[str], per_channel: bool = True) -> Iterator[list[str]]:
    """Fake-quantize exactly ``layers`` of ``network`` inside the block, then restore it.

    FakeQuantLinear shares the float Parameters, so removing it restores the float model exactly;
    no copy of the weights is made per group.
    """
    wanted = set(layers)
    names = apply_fake_quant(network, quantize=lambda name, _module: name in wanted, per_channel=per_channel)
    try:
        if set(names) != wanted:
            raise ValueError(f"not quantizable Linears of this model: {sorted(wanted - set(names))}")
        yield names
    finally:
        remove_fake_quant(network)


class _Bench:
    """One model and one split scored through the bundle's evaluator (the configs of ``adaqat evaluate``).

    The evaluate workflow is built once; each score swaps a network into its evaluator (the model as
    loaded, with some layers fake-quantized in place, or another model) and runs it. The ground-truth
    box has no random jitter, so every run sees the same prompts.
    """

    def __init__(self, model_path: str | os.PathLike, data_dir: str | os.PathLike, out_dir: Path, *, split: str,
                 split_by: str, seed: int, prompt_mode: str, limit: int | None) -> None:
        self.model_path = os.fspath(model_path)
        if model_kind(self.model_path) == SAM_INT8:
            raise CheckpointError(f"{self.model_path}: is an INT8 artefact; the sweep needs the FP32 model "
                                  "(an exported model.pt / model_fp32.pt)")
        self.workflow = load_workflow(["train", "evaluate"], {
            "dataset_dir": str(Path(data_dir).resolve()), "eval_split": split, "split#by": split_by, "split#seed": seed,
            "seed": seed, "limit": limit, "output_dir": str(Path(out_dir) / "scoring"), "metrics_prefix": "sweep",
            "prompt_mode": prompt_mode, "model_path": self.model_path, "box_jitter": [0, 0],
            "runtime": "eager"}, workflow_type="infer")  # fake-quant needs the PyTorch encoder, not onnxruntime
        parsed = self.workflow.parser.get_parsed_content
        datalist = parsed("validate#datalist")
        if not datalist:
            raise ValueError(f"{data_dir}: the {split!r} split is empty")
        self.ids = [stem(item["image"]) for item in datalist]  # the ids the metrics writer gives them
        self.network = parsed("network")
        self.evaluator = parsed("validate#evaluator")
        self.writer = parsed("validate#metrics_writer")

    def _rows(self, network: nn.Module) -> list[dict[str, Any]]:
        self.evaluator.network = network
        self.evaluator.run()
        return self.writer.rows

    def dice(self, network: nn.Module | None = None) -> list[float]:
        """Per-image Dice (0-1) of ``network`` (default: the loaded model as it is now), in ``self.ids`` order."""
        rows = {row["id"]: row["dice"] for row in self._rows(self.network if network is None else network)}
        return [float(rows[i]) for i in self.ids]


def _summary(per_image: Sequence[float], reference: Sequence[float] | None = None) -> dict[str, Any]:
    dice = 100.0 * float(np.mean(per_image))
    out: dict[str, Any] = {"dice": dice, "per_image": [float(x) for x in per_image]}
    if reference is not None:
        out["drop"] = 100.0 * float(np.mean(reference)) - dice
        # Standard error of the paired mean difference: how far a drop is from measurement noise.
        diff = 100.0 * (np.asarray(reference, dtype=float) - np.asarray(per_image, dtype=float))
        out["drop_se"] = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else None
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _write_csv(sweep: Mapping[str, Any], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "n_layers", "params", "bytes_saved", "dice", "drop_points", "drop_se"])
    writer.writerow(["float", 0, 0, 0, f"{sweep['float']['dice']:.4f}", "0.0000", ""])
    writer.writerow(["all_quantized", sum(len(g["layers"]) for g in sweep["groups"].values()),
                     sum(g["params"] for g in sweep["groups"].values()),
                     sum(g["bytes_saved"] for g in sweep["groups"].values()),
                     f"{sweep['all_quantized']['dice']:.4f}", f"{sweep['all_quantized']['drop']:.4f}",
                     _fmt(sweep['all_quantized']['drop_se'])])
    for name, g in sweep["groups"].items():
        writer.writerow([name, len(g["layers"]), g["params"], g["bytes_saved"], f"{g['dice']:.4f}", f"{g['drop']:.4f}",
                         _fmt(g["drop_se"])])
    atomic_write_text(path, buf.getvalue())


def _write_plot(sweep: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sweep["groups"])
    drops = [sweep["groups"][n]["drop"] for n in names]
    colours = ["tab:blue" if n.startswith("encoder.") else "tab:orange" for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(names) + 1.5))
    errors = [sweep["groups"][n]["drop_se"] or 0.0 for n in names]
    ax.barh(range(len(names)), drops, xerr=errors, color=colours, error_kw={"linewidth": 0.6})
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("Dice drop (points) when only this group is INT8 (bars: +-1 paired SE)")
    ax.set_title(f"float {sweep['float']['dice']:.2f}, all INT8 {sweep['all_quantized']['dice']:.2f} "
                 f"({sweep['split']} split, n={sweep['n_images']}, {sweep['prompt_mode']})", fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def run_sweep(model_path: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
              split: str = "val", split_by: str = "auto", seed: int = 42, prompt_mode: str = "two_pass",
              limit: int | None = None, per_channel: bool = True) -> dict:
    """Dice of the FP32 model on ``split`` with nothing, everything, and each group alone quantized.

    ``seed`` seeds both the split and the box jitter, as the pipeline does (the split must be the
    one the model was trained with, so that ``val`` holds no training image). Per group: Dice,
    drop in points versus float, weight parameters, and the bytes its quantization saves in the
    INT8 artefact. The FP32 file and the all-quantized artefact are written and measured (then
    deleted); group savings are added to the measured file to predict any mix. Writes
    ``sensitivity.json``/``.csv``/``.png`` in ``out_dir`` and returns the JSON's content.
    """
    if split == "test":
        raise ValueError("the sweep chooses the float list; run it on 'val' (or 'train'), never on 'test'")
    start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = _Bench(model_path, data_dir, out, split=split, split_by=split_by, seed=seed,
                   prompt_mode=prompt_mode, limit=limit)
    network = bench.network
    groups = layer_groups(network)
    all_layers = [name for layers in groups.values() for name in layers]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fp32_bytes = export_fp32(network, None, Path(tmp) / "model_fp32.pt").stat().st_size
        int8_all_bytes = export_ptq_int8(network, Path(tmp) / "model_int8.pt", [ADAPTER_PATTERN], per_channel).stat().st_size

    reference = bench.dice()
    with quantized(network, all_layers, per_channel):
        everything = bench.dice()
    sweep: dict[str, Any] = {
        "model": os.path.abspath(bench.model_path), "data_dir": os.path.abspath(data_dir), "split": split,
        "split_by": split_by, "seed": seed, "prompt_mode": prompt_mode, "limit": limit, "per_channel": per_channel,
        "n_images": len(bench.ids), "image_ids": bench.ids,
        "fp32_bytes": fp32_bytes, "int8_all_bytes": int8_all_bytes, "ratio_all_quantized": fp32_bytes / int8_all_bytes,
        "float": _summary(reference), "all_quantized": _summary(everything, reference), "groups": {},
    }
    for name, layers in groups.items():
        with quantized(network, layers, per_channel):
            scores = bench.dice()
        weights = {layer: network.get_submodule(layer).weight for layer in layers}
        saved = {layer: _bytes_saved(w, per_channel) for layer, w in weights.items()}
        sweep["groups"][name] = {"layers": layers, "patterns": group_patterns(layers),
                                 "params": sum(w.numel() for w in weights.values()),
                                 "bytes_saved": sum(saved.values()), "layer_bytes_saved": saved,
                                 **_summary(scores, reference)}
    sweep["seconds"] = time.time() - start
    atomic_write_text(out / "sensitivity.json", json.dumps(sweep, indent=2, allow_nan=False) + "\n")
    _write_csv(sweep, out / "sensitivity.csv")
    _write_plot(sweep, out / "sensitivity.png")
    return sweep


def choose_keep_float(sweep: Mapping[str, Any], size_ratio: float = 2.24, max_drop: float | None = None) -> dict:
    """The float-kept list for a size target: the most harmful groups that still fit.

    Start from everything quantized; visit the groups by Dice drop, largest first, and keep a group
    float when the predicted INT8 file stays at least ``size_ratio`` times smaller than the FP32
    file (a group that does not fit is skipped, a smaller one later may). Only groups whose drop
    exceeds ``max_drop`` points are candidates (default 0: any measured loss).

    Why greedy by drop and not by drop per byte (the knapsack heuristic): single-group drops do not
    add up (groups interact), so maximising their sum buys little, while drop per byte favours
    tiny layers whose drops are within the noise of a few dozen images. The largest single drops
    are the ones most likely to be real. ``"*lora_*"`` is always in the list (see ADAPTER_PATTERN).
    """
    fp32_bytes = int(sweep["fp32_bytes"])
    if fp32_bytes / int(sweep["int8_all_bytes"]) < size_ratio:
        raise ValueError(f"size_ratio {size_ratio} is out of reach: with every layer INT8 the file is only "
                         f"{fp32_bytes / int(sweep['int8_all_bytes']):.3f}x smaller than FP32")
    threshold = 0.0 if max_drop is None else float(max_drop)
    order = sorted(sweep["groups"].items(), key=lambda kv: (-kv[1]["drop"], kv[1]["bytes_saved"], kv[0]))
    kept: list[str] = []
    skipped: list[str] = []
    size = int(sweep["int8_all_bytes"])
    for name, group in order:
        if group["drop"] <= threshold:
            break
        if fp32_bytes / (size + group["bytes_saved"]) >= size_ratio:
            kept.append(name)
            size += group["bytes_saved"]
        else:
            skipped.append(name)
    keep_float = [p for name in kept for p in sweep["groups"][name]["patterns"]] + [ADAPTER_PATTERN]
    size = predicted_bytes(sweep, keep_float)
    quantized_groups = [n for n in sweep["groups"] if n not in kept]
    return {
        "keep_float": keep_float, "groups_kept": kept, "groups_skipped_for_size": skipped,
        "size_ratio_target": size_ratio, "max_drop": threshold,
        "fp32_bytes": fp32_bytes, "predicted_bytes": size, "predicted_ratio": fp32_bytes / size,
        "drop_recovered_sum": sum(sweep["groups"][n]["drop"] for n in kept),
        "drop_left_sum": sum(sweep["groups"][n]["drop"] for n in quantized_groups),
        "per_channel": bool(sweep.get("per_channel", True)),
        "paper": {"keep_float": list(PAPER_KEEP_FLOAT), "predicted_bytes": predicted_bytes(sweep, PAPER_KEEP_FLOAT),
                  "predicted_ratio": fp32_bytes / predicted_bytes(sweep, PAPER_KEEP_FLOAT)},
    }


def check_keep_float(model_path: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     lists: Mapping[str, Sequence[str]], sweep: Mapping[str, Any], *, runtime: bool = True) -> dict:
    """Measure float lists for real: write each one's INT8 artefact, its size and its Dice on the sweep's split.

    Per list: ``<out_dir>/model_int8_<name>.pt`` (post-training, through ``export_int8``), the
    measured and predicted bytes and ratios, Dice with fake-quant weights (the sweep's rule) and,
    with ``runtime``, Dice of the artefact itself run by the INT8 kernels, each with a paired
    Wilcoxon test against float on the same images.
    """
    out = Path(out_dir)
    bench = _Bench(model_path, data_dir, out, split=sweep["split"], split_by=sweep["split_by"], seed=sweep["seed"],
                   prompt_mode=sweep["prompt_mode"], limit=sweep.get("limit"))
    if bench.ids != list(sweep["image_ids"]):
        raise ValueError(f"{data_dir}: the {sweep['split']!r} split holds other images than the sweep's; "
                         "pass the sweep's data folder and settings")
    per_channel = bool(sweep.get("per_channel", True))
    reference = dict(zip(bench.ids, sweep["float"]["per_image"]))
    results: dict[str, Any] = {}
    for name, keep_float in lists.items():
        path = export_ptq_int8(bench.network, out / f"model_int8_{name}.pt", keep_float, per_channel)
        measured, predicted = path.stat().st_size, predicted_bytes(sweep, keep_float)
        candidate = copy.deepcopy(bench.network)
        apply_fake_quant(candidate, keep_float=list(keep_float), per_channel=per_channel)
        entry: dict[str, Any] = {
            "keep_float": list(keep_float), "artefact": str(path), "measured_bytes": measured, "predicted_bytes": predicted,
            "measured_ratio": sweep["fp32_bytes"] / measured, "predicted_ratio": sweep["fp32_bytes"] / predicted,
        }
        variants = {"fake_quant": candidate}
        if runtime:
            variants["int8_runtime"] = load_model(path, prompt_mode=sweep["prompt_mode"])
        for variant, network in variants.items():
            scores = dict(zip(bench.ids, bench.dice(network)))
            entry[variant] = {"dice": 100.0 * float(np.mean(list(scores.values()))),
                              "wilcoxon_vs_float": wilcoxon_paired(scores, reference, variant, "float")}
        results[name] = entry
    return results


__all__ = ["ADAPTER_PATTERN", "check_keep_float", "choose_keep_float", "group_patterns", "layer_groups",
           "predicted_bytes", "quantizable_layers", "quantized", "run_sweep"]
