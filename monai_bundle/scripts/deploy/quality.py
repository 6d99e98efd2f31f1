"""How far to trust a lung mask without its reference: evidence from the segmenter's own passes, a calibrated score.

A model trained on one public set segments most radiographs of another hospital well and a few badly, and the
user cannot tell which. SAM's IoU head, as trained here, ranks masks poorly (docs/results.md "Quality score"), so
the score combines cheap evidence the segmenter already has or gets for a few extra decoder passes (the encoder
runs once):

- ``iou_first`` / ``iou_final``: SAM's IoU prediction for the whole-image (or given) box and for the refined box;
- ``agree_first``: Dice between the mask of the first box and of the refined box (the two-pass prompt's two masks);
- ``agree_jitter`` / ``min_jitter``: mean and worst Dice between the final mask and masks from the refined box
  grown, shrunk and shifted by ``JITTER`` of its size;
- ``uncertain``: pixels with ``|logit| < 1`` per mask pixel (a thick unsure boundary);
- ``confidence``: mean foreground probability inside the mask;
- shape: ``area`` (fraction of the image), ``components`` (pieces over 0.5 % of the image), ``top2_share`` (the two
  largest pieces' share of the mask), ``balance`` (second largest / largest: two lungs of similar size),
  ``centre_offset`` (horizontal distance of the mask's centre from the image's, in image widths).

All of it is computed here, in numpy, from low-resolution logits, so the torch segmenter and the torch-free
predictor give the same evidence. :class:`QualityModel` turns it into a predicted Dice in [0, 1]: standardised
features, a linear model, then an isotonic map onto the real Dice of a calibration set (fitted with scikit-learn
by ``adaqat calibrate-quality``; applied here with ``np.interp``, which is what scikit-learn's
``IsotonicRegression.predict`` computes, so inference needs no scikit-learn). A score under the threshold marks
the image "review".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .imaging import label_components, refined_box
from ..atomic import atomic_write_text
from ..data.mask_write import QUALITY_REPORT_SUFFIX as CALIBRATION_SUFFIX
from ..data.mask_write import quality_report_path as report_path
from .onnx_files import file_sha256

FEATURES = ("iou_first", "iou_final", "agree_first", "agree_jitter", "min_jitter", "uncertain", "confidence",
            "area", "components", "top2_share", "balance", "centre_offset")
# The refined box moved by this fraction of its width/height: grown, shrunk, shifted left-up and right-down.
JITTER = 0.08
_JITTER_STEPS = ((-1, -1, 1, 1), (1, 1, -1, -1), (-1, -1, -1, -1), (1, 1, 1, 1))
MIN_COMPONENT = 0.005  # of the image: smaller pieces are specks, not lungs
DEFAULT_THRESHOLD = 0.90


def jittered_boxes(box: np.ndarray, size: int) -> list[np.ndarray]:
    """``box`` (x0, y0, x1, y1 in a ``size`` x ``size`` frame) grown, shrunk and shifted by ``JITTER``, clipped."""
    box = np.asarray(box, dtype=np.float32)
    step = JITTER * np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
    return [np.clip(box + step * np.array(signs, dtype=np.float32), 0, size).astype(np.float32) for signs in _JITTER_STEPS]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree (1.0)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Pixel counts of the 8-connected components of ``mask``, largest first."""
    roots, runs = label_components(mask)
    if len(runs) == 0:
        return np.zeros(0)
    _, index = np.unique(roots, return_inverse=True)
    return np.sort(np.bincount(index, weights=runs[:, 2] - runs[:, 1]))[::-1]


def evidence(first: np.ndarray, iou_first: float, refined: np.ndarray, iou_refined: float,
             jitters: Sequence[np.ndarray], final: np.ndarray, iou_final: float) -> dict[str, float]:
    """The features of ``FEATURES`` from low-resolution logits (2-D arrays of one size).

    ``first``: the first box's logits (whole image or the user's box); ``refined``: the refined box's;
    ``jitters``: the jittered refined boxes'; ``final``: the logits the mask is made from (``refined`` for
    two-pass, ``first`` otherwise), with its IoU prediction ``iou_final``.
    """
    mask = final > 0
    height, width = mask.shape
    pixels = float(height * width)
    sizes = component_sizes(mask)
    count = int(mask.sum())
    agree = [dice(j > 0, mask) for j in jitters] or [1.0]
    probability = 1.0 / (1.0 + np.exp(-np.clip(final[mask], -30, 30))) if count else np.zeros(0)
    centre = float(np.nonzero(mask)[1].mean()) / width if count else 0.0
    return {
        "iou_first": float(iou_first),
        "iou_final": float(iou_final),
        "agree_first": dice(first > 0, refined > 0),
        "agree_jitter": float(np.mean(agree)),
        "min_jitter": float(np.min(agree)),
        "uncertain": float((np.abs(final) < 1.0).sum()) / max(count, 1),
        "confidence": float(probability.mean()) if count else 0.0,
        "area": count / pixels,
        "components": float((sizes >= MIN_COMPONENT * pixels).sum()),
        "top2_share": float(sizes[:2].sum() / sizes.sum()) if count else 0.0,
        "balance": float(sizes[1] / sizes[0]) if len(sizes) > 1 else 0.0,
        "centre_offset": abs(centre - 0.5) if count else 0.5,
    }


Decoder = Callable[[np.ndarray], tuple[np.ndarray, float]]


def prompt_passes(decode: Decoder, first_box: np.ndarray, size: int, image_shape: tuple[int, int],
                  refine_margin: float, two_pass: bool, with_evidence: bool) -> tuple[np.ndarray, float, dict | None]:
    """The segmenter's prompt steps on one image: ``(final low-res logits, its IoU prediction, evidence or None)``.

    ``decode(box)`` runs the mask decoder on the image's embedding for a box in SAM input pixels (``size``) and
    returns ``(S/4 x S/4 logits, IoU prediction)``. ``first_box`` is the whole image or the user's box (SAM pixels);
    ``two_pass`` decodes a second box around the first mask (``imaging.refined_box``, ``refine_margin`` in image
    pixels). ``with_evidence`` also decodes the refined box (if not already) and its jitters and returns
    :func:`evidence`. Both routes (``SamSegmenter`` and the torch-free predictor) call this, so their prompts and
    evidence are one computation.
    """
    first, iou_first = decode(np.asarray(first_box, dtype=np.float32))
    if not (two_pass or with_evidence):
        return first, iou_first, None
    low_size = first.shape[-1]
    margin = refine_margin * low_size / max(image_shape)
    box = refined_box(first, margin)
    if box is None:  # an empty first pass keeps its box
        box = np.asarray(first_box, dtype=np.float32) * low_size / size
    refined, iou_refined = decode(box * size / low_size)
    final, iou_final = (refined, iou_refined) if two_pass else (first, iou_first)
    if not with_evidence:
        return final, iou_final, None
    jitters = [decode(b * size / low_size)[0] for b in jittered_boxes(box, low_size)]
    return final, iou_final, evidence(first, iou_first, refined, iou_refined, jitters, final, iou_final)


@dataclass
class QualityModel:
    """A predicted Dice from evidence: ``isotonic(intercept + coef . (x - mean) / scale)``, then "review" below
    ``threshold``. Written as JSON beside the model file it was fitted for (``<model stem>.quality.json``)."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    isotonic_x: list[float]
    isotonic_y: list[float]
    threshold: float = DEFAULT_THRESHOLD
    info: dict[str, Any] = field(default_factory=dict)

    def raw(self, features: Mapping[str, float]) -> float:
        """The linear model's output before calibration."""
        x = np.array([float(features[name]) for name in self.features])
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return float(self.intercept + np.dot(self.coef, (x - np.asarray(self.mean)) / np.asarray(self.scale)))

    def predict(self, features: Mapping[str, float]) -> float:
        """The predicted Dice in [0, 1]."""
        value = float(np.interp(self.raw(features), self.isotonic_x, self.isotonic_y))
        return min(max(value, 0.0), 1.0)

    def assess(self, features: Mapping[str, float], threshold: float | None = None) -> dict[str, Any]:
        """``{"predicted_dice", "review", "threshold", "evidence"}`` for one mask."""
        limit = self.threshold if threshold is None else float(threshold)
        predicted = self.predict(features)
        return {"predicted_dice": round(predicted, 4), "review": bool(predicted < limit), "threshold": limit,
                "evidence": {k: round(float(v), 5) for k, v in features.items()}}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<quality model>") -> "QualityModel":
        try:
            data = json.loads(text)
            model = cls(**data)
            lengths = {len(model.features), len(model.mean), len(model.scale), len(model.coef)}
            if len(lengths) != 1 or len(model.isotonic_x) != len(model.isotonic_y) or not model.isotonic_x:
                raise ValueError("feature or isotonic lists of different lengths")
            unknown = set(model.features) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown features {sorted(unknown)}")
            if not all(math.isfinite(v) for v in [*model.mean, *model.scale, *model.coef, model.intercept]):
                raise ValueError("non-finite numbers")
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{source}: not a quality model ({exc})") from exc
        return model


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where the quality model of ``model_path`` lives: ``models/model_int8.pt`` -> ``models/model_int8.quality.json``."""
    path = Path(model_path)
    return path.with_name(path.stem + CALIBRATION_SUFFIX)


def load_quality_model(model_path: str | os.PathLike) -> tuple[QualityModel | None, str]:
    """The quality model fitted for ``model_path`` and a one-line reason when there is none.

    A calibration is only valid for the exact model file it was fitted on (its sha256 is recorded), since another
    model's evidence maps to Dice differently.
    """
    path = calibration_path(model_path)
    if not path.is_file():
        return None, f"no quality calibration for {Path(model_path).name} ({path.name} missing; adaqat calibrate-quality makes it)"
    model = QualityModel.from_json(path.read_text(), str(path))
    expected = model.info.get("model_sha256")
    if expected and expected != file_sha256(model_path):
        return None, f"{path.name} was fitted for another model file (sha256 differs); run adaqat calibrate-quality again"
    return model, ""


# The run summary's columns: one row per input, refused ones included (status "error" and the reason).
SUMMARY_COLUMNS = ("file", "status", "error", "seconds", "mask", "predicted_dice", "review")


def write_report(mask_path: str | os.PathLike, assessment: Mapping[str, Any]) -> Path:
    """``<mask>.quality.json`` beside the mask: the mask's name and its assessment (atomic)."""
    return atomic_write_text(report_path(mask_path), json.dumps({"mask": Path(mask_path).name, **assessment}, indent=2) + "\n")


def write_summary(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> Path:
    """The run's summary CSV (atomic): ``columns`` of each row, missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


__all__ = ["CALIBRATION_SUFFIX", "DEFAULT_THRESHOLD", "FEATURES", "JITTER", "QualityModel", "calibration_path",
           "component_sizes", "dice", "evidence", "jittered_boxes", "load_quality_model", "prompt_passes",
           "report_path", "SUMMARY_COLUMNS", "write_report", "write_summary"]
