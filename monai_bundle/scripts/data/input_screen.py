"""Check every input of a run before it starts: a bad file is reported and skipped, never fatal to a batch.

Why a pass of its own: MONAI's datasets and ignite's engines stop the whole run at the first exception
raised by a transform, and a hospital folder of a thousand radiographs should not be lost to one corrupt
file. Each item is read once here with the same readers the transforms use (``scripts.data.cxr_io``), plus the
content checks that make a result meaningful (size, a blank image, an empty mask). The failures are
logged one line each and written to ``<report_dir>/failures_<name>.json``; the run then goes on with the
good items, and :func:`raise_if_failed` turns the failures into a non-zero exit once the good ones are done.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_text
from .cxr_io import MAX_PIXELS, CXRInputError, read_cxr, read_mask

logger = logging.getLogger("adaqat.inputs")

MIN_SIDE = 32  # px; SAM upsamples anything smaller to 256 and would segment interpolation, not anatomy
# MAX_PIXELS (cxr_io's): the readers refuse a larger declared size from the header, before decoding


class InputFailuresError(CXRInputError):
    """Some inputs of a batch were skipped; the message lists each file and its problem."""


def check_image(img: np.ndarray, path: str | os.PathLike) -> None:
    """Content checks on a read CXR (``read_cxr`` output): big enough, not absurdly large, not blank."""
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise CXRInputError(f"{path}: image is {w}x{h} px; a chest radiograph needs at least {MIN_SIDE} px per side")
    if h * w > MAX_PIXELS:
        raise CXRInputError(f"{path}: image is {w}x{h} px, over the limit of {MAX_PIXELS:,} pixels")
    if not img.any():
        raise CXRInputError(f"{path}: image is blank (every pixel has the same value); nothing to segment")


def check_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """A reference mask must mark some lung: an empty one gives no box prompt and no defined Dice."""
    if not mask.any():
        raise CXRInputError(f"mask {path}: mask is empty (no foreground pixel)")


def check_item(item: Mapping[str, Any], image_key: str = "image", mask_key: str | None = "label") -> None:
    """Read and check one datalist item (image, and its mask when ``mask_key`` is present)."""
    img, header = read_cxr(item[image_key])
    check_image(img, item[image_key])
    if mask_key and item.get(mask_key) is not None:
        mask = read_mask(item[mask_key], expected_shape=header["shape"], reference=item[image_key])
        check_mask(mask, item[mask_key])


def failures_path(report_dir: str | os.PathLike, name: str) -> Path:
    return Path(report_dir) / f"failures_{name}.json"


def screen_datalist(datalist: Sequence[Mapping[str, Any]], report_dir: str | os.PathLike | None = None,
                    name: str = "inputs", image_key: str = "image", mask_key: str | None = "label",
                    require_mask: bool = False, allow_all_failed: bool = False) -> list[dict[str, Any]]:
    """The items that can be used; the others are logged and listed in ``failures_<name>.json``.

    All items failing is an error at once (nothing would be processed), unless ``allow_all_failed`` (one worker's
    shard of a larger run, whose other workers must not be stopped by it). ``require_mask`` makes a missing mask a
    failure (training and evaluation need one).
    """
    good: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for item in datalist:
        try:
            if require_mask and mask_key and item.get(mask_key) is None:
                raise CXRInputError(f"{item[image_key]}: no mask listed for this image")
            check_item(item, image_key, mask_key)
        except CXRInputError as exc:
            failures.append({"path": str(item[image_key]), "problem": str(exc)})
            logger.warning("skipped: %s", exc)
        else:
            good.append(dict(item))
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        report = {"n_inputs": len(datalist), "n_usable": len(good), "failures": failures}
        atomic_write_text(failures_path(report_dir, name), json.dumps(report, indent=2) + "\n")
    if failures:
        logger.warning("%d of %d %s skipped (%s)", len(failures), len(datalist), name,
                       failures_path(report_dir, name) if report_dir is not None else "not saved")
    if datalist and not good and not allow_all_failed:
        raise InputFailuresError(_summary(f"none of the {len(datalist)} {name} can be used", failures))
    return good


def _summary(headline: str, failures: Sequence[Mapping[str, str]], limit: int = 20) -> str:
    lines = [f"  {f['problem']}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return "\n".join([headline + ":"] + lines)


def raise_if_failed(report_dir: str | os.PathLike, name: str = "inputs", parts: Sequence[str] | None = None) -> None:
    """After the good items are done: a non-zero exit that lists the skipped files, if there were any.

    ``parts``: report names to gather instead of ``name`` alone (the workers of one run, ``scripts.data.archive``).
    """
    failures, total, paths = [], 0, [failures_path(report_dir, part) for part in (parts or [name])]
    for path in paths:
        if path.is_file():
            report = json.loads(path.read_text())
            failures += report["failures"]
            total += int(report["n_inputs"])
    if failures:
        where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} other worker part(s)"
        raise InputFailuresError(_summary(
            f"{len(failures)} of {total} {name} failed and were skipped; the other {total - len(failures)} were processed "
            f"(list in {where})", failures))


__all__ = ["InputFailuresError", "MIN_SIDE", "MAX_PIXELS", "check_image", "check_mask", "check_item",
           "failures_path", "screen_datalist", "raise_if_failed"]
