"""Ignite handler that scores every evaluated image and writes a per-image CSV plus a summary JSON.

Why not MONAI's metric handlers with ``save_details`` + ``MetricsSaver``: they write one raw CSV per
metric with NaN/inf for an empty mask, while the paper's tables and the paired Wilcoxon tests need one
row per image id with all five metrics (Dice/IoU/NSD/HD95/ASSD) under one empty-mask rule; the scores
themselves are MONAI's (:mod:`.metrics`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from monai.data import decollate_batch
from monai.transforms import Resize
from monai.utils import IgniteInfo, min_version, optional_import

from ..data.cxr_io import stem
from .metrics import METRIC_KEYS, binarise, image_metrics, write_metrics

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

RESOLUTIONS = ("original", "low_res")


def _meta_filename(obj: Any) -> str | None:
    meta = getattr(obj, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        name = meta["filename_or_obj"]
        if isinstance(name, (list, tuple)):  # not decollated: one name per batch item
            name = name[0] if len(name) == 1 else None
        return str(name) if name else None
    return None


def image_id(item: Mapping[str, Any], fallback: int, pred_key: str = "pred", label_key: str = "label") -> str:
    """Stem of the source file (image, else pred, else label meta); ``fallback`` index otherwise."""
    for key in ("image", pred_key, label_key):
        name = _meta_filename(item.get(key))
        if name:
            return stem(name)
    return f"{fallback:05d}"


class SegmentationMetricsWriter:
    """Per-image segmentation metrics for a MONAI evaluator, written to CSV/JSON at the end of a run.

    Fires on:
      * ``EPOCH_STARTED``: clears the rows, so each validation run (or epoch) is scored on its own;
      * ``ITERATION_COMPLETED``: reads ``engine.state.output`` — a list of per-image dicts as a
        ``SupervisedEvaluator`` with decollate + postprocessing produces (a batched dict is
        decollated here) — takes ``item[pred_key]`` (1, H, W), binary or probabilities (>= 0.5),
        and ``item[label_key]`` (1, H, W), and scores them with :func:`.seg_metrics.image_metrics`.
        The id is the stem of ``item["image"].meta["filename_or_obj"]`` (then pred/label meta,
        then a running index);
      * ``COMPLETED``: writes ``<output_dir>/<prefix>.csv`` and ``<prefix>_summary.json``, puts the
        summary on ``engine.state.adaqat_metrics`` and sets ``engine.state.metrics["mean_<m>"]``
        for each metric unless another handler already owns that key.

    ``resolution="low_res"`` is the paper's metric setting: the prediction is SAM's own low-resolution mask
    (the evaluator's network returns its ``image_size/4`` logits, thresholded there) and the reference is
    resized (nearest) to that grid; distances are then in low-res pixels. Rows are per process: in multi-GPU runs attach it on rank 0 only
    or gather outputs first.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        prefix: str = "metrics",
        nsd_tolerance_px: float = 2.0,
        resolution: str = "original",
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.nsd_tolerance_px = float(nsd_tolerance_px)
        self.resolution = resolution
        self.pred_key = pred_key
        self.label_key = label_key
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._owned_metric_keys: set[str] = set()

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}_summary.json"

    def attach(self, engine: Engine) -> None:
        """Register the three event callbacks on ``engine`` (idempotent)."""
        for event, fn in (
            (Events.EPOCH_STARTED, self.epoch_started),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.COMPLETED, self.completed),
        ):
            if not engine.has_event_handler(fn, event):
                engine.add_event_handler(event, fn)

    def epoch_started(self, engine: Engine) -> None:
        self.rows = []

    def _reference_on(self, label: Any, pred: torch.Tensor) -> torch.Tensor:
        """The reference on the prediction's grid: resized (nearest) when scoring SAM's low-res output."""
        ref = binarise(label)
        if self.resolution == "low_res" and ref.shape != pred.shape:
            ref = Resize(spatial_size=tuple(pred.shape), mode="nearest")(ref[None].float())
            ref = (ref.as_tensor() if hasattr(ref, "as_tensor") else ref)[0] >= 0.5
        return ref

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, Mapping):
            output = decollate_batch(output)
        if not isinstance(output, (list, tuple)):
            raise TypeError(f"engine.state.output must be a list of per-image dicts, got {type(output).__name__}")
        for item in output:
            if self.pred_key not in item or self.label_key not in item:
                raise KeyError(f"output item lacks {self.pred_key!r} or {self.label_key!r}: keys {sorted(item)}")
            rid = image_id(item, len(self.rows), self.pred_key, self.label_key)
            pred = binarise(item[self.pred_key])
            scores = image_metrics(pred, self._reference_on(item[self.label_key], pred), self.nsd_tolerance_px)
            self.rows.append({"id": rid, **scores})

    def completed(self, engine: Engine) -> None:
        extra = {
            "resolution": self.resolution,
            "nsd_tolerance_px": self.nsd_tolerance_px,
            "epoch": int(engine.state.epoch),
        }
        self.summary = write_metrics(self.rows, self.csv_path, self.json_path, extra=extra)
        engine.state.adaqat_metrics = self.summary
        for m in METRIC_KEYS:
            key = f"mean_{m}"
            # Keys set by us on an earlier run are refreshed; keys from other handlers are left alone.
            if key not in engine.state.metrics or key in self._owned_metric_keys:
                engine.state.metrics[key] = self.summary["metrics"][m]["mean"]
                self._owned_metric_keys.add(key)


__all__ = ["SegmentationMetricsWriter", "image_id"]
