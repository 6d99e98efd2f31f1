"""Per-image segmentation metrics, their summary, and a paired test between two prediction sets.

Why a module of its own: the evaluation handler, the report scripts and the CLI must score masks
the same way (same empty-mask rules, same pixel units), so the definitions live in one place.
All distances are in pixels of the grid the masks are given on; MONAI computes the metrics,
this module only fixes the conventions around them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from scipy.stats import wilcoxon

from ..atomic import atomic_write_text

METRIC_KEYS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95", "assd")
CSV_COLUMNS: tuple[str, ...] = ("id",) + METRIC_KEYS


def binarise(mask: np.ndarray | torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Return a bool (H, W) tensor; accepts (H, W) or (1, H, W), binary or probabilities.

    ``>= threshold`` matches MONAI's ``AsDiscrete(threshold=...)``, so already-binarised
    predictions and raw probabilities give the same mask.
    """
    if isinstance(mask, torch.Tensor):
        # MetaTensor -> plain tensor: metadata is irrelevant to scoring and slows MONAI ops down
        t = mask.as_tensor() if hasattr(mask, "as_tensor") else mask
    else:
        t = torch.as_tensor(np.asarray(mask))
    t = t.detach().cpu()
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D mask (H, W) or (1, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        return t
    return t.float() >= threshold


def dice_score(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> float:
    """Dice alone (cheap, no surface distances); both empty -> 1.0 as in :func:`image_metrics`."""
    p, g = binarise(pred), binarise(label)
    return float(compute_dice(p[None, None].float(), g[None, None].float(), ignore_empty=False)[0, 0])


def image_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    nsd_tolerance_px: float = 2.0,
) -> dict[str, float]:
    """Dice, IoU, NSD (at ``nsd_tolerance_px``), HD95 and ASSD for one binary 2-D mask pair.

    Distances are in pixels. HD95 is the larger of the two directed 95th-percentile surface
    distances; ASSD is the mean over the surface points of both masks (MONAI's symmetric ASD).

    Empty masks (MONAI returns NaN/inf there, which would poison means):
      * both empty: a perfect answer -> dice = iou = nsd = 1, hd95 = assd = 0;
      * exactly one empty: dice = iou = nsd = 0, hd95 = assd = the image diagonal
        sqrt(H**2 + W**2) — the largest distance possible on the grid, finite on purpose so
        that means and Wilcoxon tests over a set stay defined while still penalising the miss.
    """
    p, g = binarise(pred), binarise(label)
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and label {tuple(g.shape)} differ in shape")
    p_empty, g_empty = not bool(p.any()), not bool(g.any())
    if p_empty and g_empty:
        return {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    if p_empty or g_empty:
        diag = float(math.hypot(*p.shape))
        return {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": diag, "assd": diag}

    # MONAI wants batch-first, channel-first one-hot; one foreground channel, so keep "background".
    yp, yg = p[None, None].float(), g[None, None].float()
    return {
        "dice": float(compute_dice(yp, yg, include_background=True)[0, 0]),
        "iou": float(compute_iou(yp, yg, include_background=True)[0, 0]),
        "nsd": float(
            compute_surface_dice(yp, yg, class_thresholds=[float(nsd_tolerance_px)], include_background=True)[0, 0]
        ),
        "hd95": float(compute_hausdorff_distance(yp, yg, include_background=True, percentile=95)[0, 0]),
        "assd": float(compute_average_surface_distance(yp, yg, include_background=True, symmetric=True)[0, 0]),
    }


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    """Mean, std (sample, ddof=1; 0 for one value), median, min, max and n per metric.

    Non-finite or missing values are skipped and ``n`` counts only what was used, so one failed
    image cannot turn a whole summary into NaN unnoticed. A metric with no values gets NaN stats.
    """
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        vals = np.array([float(r[key]) for r in rows if r.get(key) not in (None, "")], dtype=float)
        vals = vals[np.isfinite(vals)]
        n = int(vals.size)
        if n == 0:
            out[key] = {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
            continue
        out[key] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(vals)),
            "min": float(vals.min()),
            "max": float(vals.max()),
            "n": n,
        }
    return out


def wilcoxon_paired(
    a: Mapping[str, float],
    b: Mapping[str, float],
    name_a: str = "a",
    name_b: str = "b",
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` over the image ids both sets share.

    Pairing by id (not by order) is the point: two runs may list images differently. Pairs with a
    non-finite value are dropped (counted in ``n_dropped_nonfinite``). Zero differences are
    discarded (``zero_method="wilcox"``); if every difference is zero the sets are identical on
    this metric and the result is statistic 0, p 1.0 rather than SciPy's NaN.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{name_a} and {name_b} share no image ids; cannot pair them")
    pairs = [(float(a[k]), float(b[k])) for k in common]
    finite = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    if len(finite) < 2:
        raise ValueError(f"need at least 2 paired finite values, got {len(finite)} ({name_a} vs {name_b})")
    xa, xb = np.array(finite).T
    diff = xa - xb
    if np.all(diff == 0):
        statistic, p_value = 0.0, 1.0
    else:
        res = wilcoxon(xa, xb, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    return {
        "name_a": name_a,
        "name_b": name_b,
        "n": int(diff.size),
        "n_only_a": len(set(a) - set(b)),
        "n_only_b": len(set(b) - set(a)),
        "n_dropped_nonfinite": len(pairs) - len(finite),
        "statistic": statistic,
        "p_value": p_value,
        "median_difference": float(np.median(diff)),
        "mean_difference": float(np.mean(diff)),
    }


def _to_float(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def read_metrics_csv(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per-image rows of a metrics CSV keyed by ``id``; numeric columns come back as floats."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'id' column")
        rows: dict[str, dict[str, Any]] = {}
        for r in reader:
            rid = r["id"]
            if rid in rows:
                raise ValueError(f"{path}: duplicate id {rid!r}")
            rows[rid] = {"id": rid, **{k: _to_float(v) for k, v in r.items() if k != "id" and v is not None}}
    return rows


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null so any JSON reader can load the summary."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def write_metrics(
    rows: Iterable[Mapping[str, Any]],
    csv_path: str | os.PathLike,
    json_path: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the per-image CSV (id, dice, iou, nsd, hd95, assd) and a summary JSON, both atomically.

    The JSON is ``{"n_images": ..., "metrics": summarise(rows), **extra}``; it is returned too.
    Extra row fields are ignored so the CSV layout stays fixed for :func:`read_metrics_csv`.
    """
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(float(r[k])) if k != "id" else r[k]) for k in CSV_COLUMNS})
    atomic_write_text(csv_path, buf.getvalue())
    summary: dict[str, Any] = {"n_images": len(rows), "metrics": summarise(rows), **dict(extra or {})}
    atomic_write_text(json_path, json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary


def compare_prediction_sets(
    csv_a: str | os.PathLike,
    csv_b: str | os.PathLike,
    metric: str = "dice",
    name_a: str | None = None,
    name_b: str | None = None,
) -> dict[str, Any]:
    """Paired Wilcoxon test of ``metric`` between two per-image CSVs of the same images, plus each set's mean.

    Both must score exactly the same images: a missing image would silently change what is compared, so it is
    an error naming the images and the file that lacks them.
    """
    name_a, name_b = name_a or str(csv_a), name_b or str(csv_b)
    ra, rb = read_metrics_csv(csv_a), read_metrics_csv(csv_b)
    only_a, only_b = sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{csv_b} lacks {only_a[:5]}{' ...' if len(only_a) > 5 else ''}")
        if only_b:
            parts.append(f"{csv_a} lacks {only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
        raise ValueError(f"cannot pair {name_a} with {name_b}: not the same images; " + "; ".join(parts))
    va = {k: float(r[metric]) for k, r in ra.items() if metric in r}
    vb = {k: float(r[metric]) for k, r in rb.items() if metric in r}
    if not va or not vb:
        raise ValueError(f"column {metric!r} missing in {csv_a if not va else csv_b}")
    result = wilcoxon_paired(va, vb, name_a, name_b)
    ids = sorted(va)
    result.update({"metric": metric, "ids": ids, "mean_a": float(np.nanmean([va[k] for k in ids])),
                   "mean_b": float(np.nanmean([vb[k] for k in ids]))})
    return result
