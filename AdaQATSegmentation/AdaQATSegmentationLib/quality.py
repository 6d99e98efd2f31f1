"""The mask's quality score: read the report the bundle wrote beside the mask, show it, keep it on the node.

Both routes (the torch-free predictor and the bundle's inference config) write ``<mask>.quality.json`` beside
each mask: the predicted Dice of a calibration fitted for the model file, a "review" flag when it is under the
threshold, and the threshold (``monai_bundle/scripts/deploy/quality.py``). A model without a calibration writes
none and prints ``quality score off: <reason>``; then the module says "no quality score (reason)" and carries on.
Plain Python (no numpy, no Qt): the widget shows ``QualityResult.text()``, tests read the node's attributes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

REPORT_SUFFIX = ".quality.json"
# on the segmentation node (and, for the score and flag, as tags of each segment the module wrote)
PREDICTED_DICE = "AdaQAT.PredictedDice"
REVIEW = "AdaQAT.Review"
THRESHOLD = "AdaQAT.QualityThreshold"
UNAVAILABLE = "AdaQAT.QualityUnavailable"
ATTRIBUTES = (PREDICTED_DICE, REVIEW, THRESHOLD, UNAVAILABLE)
_OFF_LINE = re.compile(r"quality score off: (.+)$")


@dataclass(frozen=True)
class QualityResult:
    """A mask's predicted Dice, its review flag and threshold, or the reason there is no score."""

    predicted_dice: float | None = None
    review: bool | None = None
    threshold: float | None = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.predicted_dice is not None

    def text(self) -> str:
        """What the module's status label says."""
        if not self.available:
            return f"No quality score ({self.reason or 'unknown reason'})"
        if self.review:
            return (f"Review: predicted Dice {self.predicted_dice:.2f} < {self.threshold:.2f} \u2014 check this mask "
                    "before using it")
        return f"Quality: predicted Dice {self.predicted_dice:.2f} (\u2265 {self.threshold:.2f}, no review needed)"


def report_path(mask_path: str | Path) -> Path | None:
    """The report beside ``mask_path``: the ``*.quality.json`` in its folder that names it (its ``"mask"`` field).

    Found by content, not by re-deriving the engine's naming rule, so the rule lives in one place
    (``scripts.data.mask_write.quality_report_path``); the module's runs write one mask per folder anyway.
    """
    path = Path(mask_path)
    for candidate in sorted(path.parent.glob("*" + REPORT_SUFFIX)):
        try:
            if json.loads(candidate.read_text()).get("mask") == path.name:
                return candidate
        except (OSError, ValueError, AttributeError):
            continue
    return None


def reason_from_log(lines: Sequence[str]) -> str:
    """The engine's ``quality score off: <reason>`` line, if it printed one."""
    for line in reversed(lines):
        match = _OFF_LINE.search(line)
        if match:
            return match.group(1).strip()
    return ""


def read_report(mask_path: str | Path, log_lines: Sequence[str] = ()) -> QualityResult:
    """The quality report beside ``mask_path``; never raises: a missing or unreadable one gives the reason."""
    path = report_path(mask_path)
    if path is None:
        return QualityResult(reason=reason_from_log(log_lines) or "the engine wrote no quality report for this mask")
    try:
        report = json.loads(path.read_text())
        if report.get("predicted_dice") is None and report.get("unavailable"):
            return QualityResult(reason=str(report["unavailable"]))
        predicted = float(report["predicted_dice"])
        threshold = float(report["threshold"])
        review = report.get("review")
        review = bool(review) if isinstance(review, bool) else predicted < threshold
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return QualityResult(reason=f"unreadable quality report {path.name}: {exc}")
    return QualityResult(predicted, review, threshold)


def store_on_node(node: Any, result: QualityResult, segment_ids: Sequence[str] = ()) -> None:
    """Node attributes ``AdaQAT.PredictedDice`` / ``Review`` / ``QualityThreshold`` (or ``QualityUnavailable``
    with the reason), and the score and flag as tags of the module's own segments; a previous run's are replaced."""
    for name in ATTRIBUTES:
        node.RemoveAttribute(name)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetSegment(sid) for sid in segment_ids]
    for segment in segments:
        for name in (PREDICTED_DICE, REVIEW):
            segment.RemoveTag(name)
    if not result.available:
        node.SetAttribute(UNAVAILABLE, result.reason)
        return
    values = {PREDICTED_DICE: f"{result.predicted_dice:.4f}", REVIEW: "true" if result.review else "false"}
    for name, value in values.items():
        node.SetAttribute(name, value)
        for segment in segments:
            segment.SetTag(name, value)
    node.SetAttribute(THRESHOLD, f"{result.threshold:.4f}")


def segment_tag(segment: Any, name: str) -> str | None:
    """A tag of a ``vtkSegment`` (its ``GetTag`` fills an output argument), None when absent."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def from_node(node: Any) -> QualityResult | None:
    """What ``store_on_node`` kept on ``node`` (None: never scored by this module)."""
    dice = node.GetAttribute(PREDICTED_DICE)
    if dice:
        threshold = node.GetAttribute(THRESHOLD)
        return QualityResult(float(dice), node.GetAttribute(REVIEW) == "true", float(threshold) if threshold else None)
    reason = node.GetAttribute(UNAVAILABLE)
    return QualityResult(reason=reason) if reason is not None else None
