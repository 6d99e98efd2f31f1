"""The comparison's figures (PNG, matplotlib Agg), drawn from what the runs wrote.

* ``dice_boxplots.png``: per-image Dice per method, one panel per prompt;
* ``adalora_ranks.png``: the final AdaLoRA rank per layer x target module (heat map) and the total rank budget
  over training, from the run's ``rank_pattern.json``;
* ``curves.png``: training loss and validation Dice per method, from each run's TensorBoard events;
* ``overlays.png``: best, median and worst test image of each method (its own two-pass Dice ranking);
* ``int8_vs_fp32.png``: per-image Dice of each INT8 model against its FP32 parent.

Overlays of JSRT images show JSRT pixels: they are written only under the study's output folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scripts.atomic import atomic_path  # noqa: E402
from scripts.data.datasets import select_split  # noqa: E402
from scripts.evaluation.metrics import read_metrics_csv  # noqa: E402

from adaqat.overlays import save_overlay_grid  # noqa: E402
from adaqat.report import case_items, pick_cases  # noqa: E402
from adaqat.study.methods import METHODS  # noqa: E402
from adaqat.study.tables import PROMPT_LABELS  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _dice(root: Path, method: str, prompt: str) -> dict[str, float]:
    return {k: float(r["dice"]) for k, r in read_metrics_csv(root / method / "eval" / f"{prompt}.csv").items()}


def dice_boxplots(root: Path, methods: list[Any], path: Path) -> Path:
    """One panel per SAM prompt; every method's per-image Dice, the prompt-free UNet repeated in each panel."""
    prompts = [p for p in ("box", "whole", "two_pass") if any(p in m.prompts for m in methods)]
    fig, axes = plt.subplots(1, len(prompts), figsize=(5.5 * len(prompts), 4.8), sharey=True, squeeze=False)
    for ax, prompt in zip(axes[0], prompts):
        data, labels = [], []
        for m in methods:
            use = prompt if prompt in m.prompts else ("none" if "none" in m.prompts else None)
            if use is None:
                continue
            data.append(100 * np.array(list(_dice(root, m.name, use).values())))
            labels.append(m.name + ("" if use == prompt else " (no prompt)"))
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=40, ha="right")
        ax.set_title(f"prompt: {PROMPT_LABELS[prompt]}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice % per test image")
    return _save(fig, path)


_LAYER = re.compile(r"blocks\.(\d+)\.(.+)$")


def rank_plot(rank_pattern_json: Path, path: Path) -> Path:
    """Heat map of the final rank (layer x target module) beside the total budget over training."""
    history = json.loads(rank_pattern_json.read_text())["history"]
    if not history:
        raise ValueError(f"{rank_pattern_json}: empty rank history")
    final = history[-1]["ranks"]
    cells: dict[tuple[int, str], int] = {}
    for name, rank in final.items():
        match = _LAYER.search(name)
        layer, module = (int(match.group(1)), match.group(2)) if match else (0, name)
        cells[(layer, module)] = rank
    layers = sorted({k[0] for k in cells})
    modules = sorted({k[1] for k in cells})
    grid = np.full((len(layers), len(modules)), np.nan)
    for (layer, module), rank in cells.items():
        grid[layers.index(layer), modules.index(module)] = rank
    fig, (ax_map, ax_budget) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.45 * len(layers) + 1.5)))
    image = ax_map.imshow(grid, aspect="auto", cmap="viridis")
    middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):  # dark text on the bright (high-rank) cells of viridis
            ax_map.text(j, i, f"{int(value)}", ha="center", va="center", color="k" if value > middle else "w")
    ax_map.set_xticks(range(len(modules)), modules)
    ax_map.set_yticks(range(len(layers)), [f"block {i}" for i in layers])
    ax_map.set_title("AdaLoRA rank at the end of stage 1")
    fig.colorbar(image, ax=ax_map, label="rank")
    ax_budget.plot([h["epoch"] for h in history], [h["budget"] for h in history], marker="o")
    ax_budget.set_xlabel("epoch")
    ax_budget.set_ylabel("total rank budget")
    ax_budget.set_title("rank budget over training")
    ax_budget.grid(alpha=0.3)
    return _save(fig, path)


def _scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """One scalar series from a run's TensorBoard event files (all files of the run, in step order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            points.update({e.step: e.value for e in acc.Scalars(tag)})
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def training_curves(root: Path, methods: list[Any], path: Path) -> Path:
    """Training loss per iteration and validation Dice per epoch of every trained method."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in methods:
        steps, loss = _scalars(root / m.name, "train_loss")
        if steps:
            ax_loss.plot(steps, loss, label=m.name, alpha=0.8, marker="." if len(steps) < 30 else None)
        epochs, dice = _scalars(root / m.name, "val_mean_dice")
        if epochs:
            ax_val.plot(epochs, 100 * np.array(dice), marker="o", label=m.name)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="training loss", yscale="log")
    ax_val.set(xlabel="epoch", ylabel="validation Dice %", title="validation Dice (per epoch)")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def int8_scatter(root: Path, methods: list[Any], path: Path) -> Path:
    """Per-image Dice: each INT8 model (y) against its FP32 parent (x), one panel per prompt."""
    int8 = [m for m in methods if m.parent]
    prompts = [p for p in ("box", "whole", "two_pass") if any(p in m.prompts for m in int8)]
    fig, axes = plt.subplots(1, len(prompts), figsize=(4.8 * len(prompts), 4.6), squeeze=False)
    for ax, prompt in zip(axes[0], prompts):
        lo = 100.0
        for m in int8:
            parent, child = _dice(root, m.parent, prompt), _dice(root, m.name, prompt)
            ids = sorted(set(parent) & set(child))
            x, y = 100 * np.array([parent[i] for i in ids]), 100 * np.array([child[i] for i in ids])
            ax.scatter(x, y, s=14, alpha=0.7, label=m.name)
            lo = min(lo, x.min(initial=100), y.min(initial=100))
        ax.plot([lo, 100], [lo, 100], "k--", lw=0.8)
        ax.set(xlabel="FP32 parent Dice %", ylabel="INT8 Dice %", title=f"prompt: {PROMPT_LABELS[prompt]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def overlay_grid(root: Path, methods: list[Any], records: Mapping[str, Any], data: str, split_by: str, seed: int,
                 limit: int | None, path: Path) -> Path:
    """Rows = methods; columns = that method's worst, median and best test image (by its own Dice)."""
    test = {Path(item["image"]).stem: item for item in select_split(data, "test", seed=seed, by=split_by, limit=limit)}
    items = []
    for m in methods:
        prompt = "two_pass" if "two_pass" in m.prompts else m.prompts[0]
        picks = pick_cases(root / m.name / "eval" / f"{prompt}.csv")
        items += case_items(records[m.name]["model"], picks, test, caption=f"{m.name} ")
    save_overlay_grid(items, path, cols=3, tile_size=224)
    return path


def plot_protocol(root: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """Every figure of one protocol into ``<root>/plots``; returns name -> path."""

    methods = [m for m in METHODS if m.name in meta["methods"]]
    plots = root / "plots"
    trained = [m for m in methods if m.name != "ptq"]
    written = {
        "dice_boxplots": dice_boxplots(root, methods, plots / "dice_boxplots.png"),
        "adalora_ranks": rank_plot(root / "adalora" / "rank_pattern.json", plots / "adalora_ranks.png"),
        "curves": training_curves(root, trained, plots / "curves.png"),
        "overlays": overlay_grid(root, methods, meta["methods"], meta["data"], meta["split_by"], meta["seed"],
                                 meta.get("limit"), plots / "overlays.png"),
        "int8_vs_fp32": int8_scatter(root, methods, plots / "int8_vs_fp32.png"),
    }
    return {k: str(v) for k, v in written.items()}


__all__ = ["dice_boxplots", "int8_scatter", "overlay_grid", "plot_protocol", "rank_plot", "training_curves"]
