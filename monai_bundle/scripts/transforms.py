"""MONAI dictionary transforms for CXR loading and SAM box prompts.

Why: the bundle configs compose these with stock MONAI transforms (Resized, RandAffined, ...);
loading goes through :mod:`.cxr_io` so every format behaves the same, and the box prompt is
derived from the label after the spatial transforms, in the current image's pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from .cxr_io import read_cxr, read_mask


def box_from_mask(mask2d: Any, margin: float = 0, threshold: float = 0.5) -> np.ndarray | None:
    """Bounding box ``[x0, y0, x1, y1]`` (float32, exclusive ends, so a full mask gives [0, 0, W, H])
    of ``mask2d > threshold``, pushed out by ``margin`` px and clipped to the image; None if empty.

    Accepts numpy or torch, (H, W) or (1, H, W); the threshold makes bilinearly resized masks work.
    """
    m = np.asarray(mask2d.detach().cpu() if isinstance(mask2d, torch.Tensor) else mask2d)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"box_from_mask expects a 2-D mask, got shape {m.shape}")
    fg = m > threshold
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return None
    h, w = fg.shape
    box = np.array([cols[0] - margin, rows[0] - margin, cols[-1] + 1 + margin, rows[-1] + 1 + margin], dtype=np.float64)
    return np.clip(box, 0, [w, h, w, h]).astype(np.float32)


def whole_image_box(height: int, width: int) -> torch.Tensor:
    """The box covering the whole image, ``[0, 0, W, H]`` (the prompt used at inference)."""
    return torch.tensor([0.0, 0.0, float(width), float(height)], dtype=torch.float32)


class LoadCXRd(MapTransform):
    """Load image and label paths with :func:`read_cxr` / :func:`read_mask` into (1, H, W) MetaTensors.

    The label is checked against the image's size. Values that are not paths (already loaded
    arrays) are passed through unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_shape: tuple[int, int] | None = None
        image_path: str | None = None
        if self.image_key in self.keys and self.image_key in d and _is_path(d[self.image_key]):
            image_path = str(d[self.image_key])
            img, header = read_cxr(image_path)
            image_shape = header["shape"]
            d[self.image_key] = MetaTensor(torch.from_numpy(img)[None], meta=_meta(image_path, header))
        elif self.image_key in d and hasattr(d[self.image_key], "shape"):
            image_shape = tuple(int(s) for s in d[self.image_key].shape[-2:])
        for key in self.key_iterator(d):
            if key == self.image_key or not _is_path(d[key]):
                continue
            path = str(d[key])
            mask = read_mask(path, expected_shape=image_shape, reference=image_path)
            meta = {"filename_or_obj": path, "spatial_shape": tuple(mask.shape), "original_channel_dim": "no_channel"}
            d[key] = MetaTensor(torch.from_numpy(mask.astype(np.float32))[None], meta=meta)
        return d


def _is_path(value: Any) -> bool:
    return isinstance(value, str) or hasattr(value, "__fspath__")


def _meta(path: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """MetaTensor meta: MONAI's keys plus the collate-safe parts of the cxr_io header (no None)."""
    meta: dict[str, Any] = {
        "filename_or_obj": path,
        "spatial_shape": tuple(header["shape"]),
        "original_channel_dim": "no_channel",
        "cxr_format": header["format"],
        "squeezed_3d": bool(header["squeezed_3d"]),
        "inverted": bool(header.get("inverted", False)),
    }
    return meta


class BoxFromMaskd(Randomizable, MapTransform):
    """SAM box prompt from the label: its bounding box with each side pushed out by an independent
    random ``jitter`` px (inclusive integers), clipped to the current image.

    With probability ``whole_image_prob`` (and always for an empty mask) the box is the whole image,
    so the model also learns the inference-time prompt. Box: float32 tensor (4,) xyxy, exclusive ends.
    """

    def __init__(
        self,
        label_key: str = "label",
        box_key: str = "box",
        jitter: Sequence[int] = (0, 20),
        whole_image_prob: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        self.label_key, self.box_key = label_key, box_key
        lo, hi = int(jitter[0]), int(jitter[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"jitter must be (low, high) with 0 <= low <= high, got {tuple(jitter)}")
        if not 0.0 <= whole_image_prob <= 1.0:
            raise ValueError(f"whole_image_prob must be in [0, 1], got {whole_image_prob}")
        self.jitter = (lo, hi)
        self.whole_image_prob = float(whole_image_prob)
        self._offsets = np.zeros(4)
        self._whole = False

    def randomize(self, data: Any = None) -> None:
        self._whole = self.R.random_sample() < self.whole_image_prob
        self._offsets = self.R.randint(self.jitter[0], self.jitter[1] + 1, size=4)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"BoxFromMaskd: key {self.label_key!r} not in data (keys: {list(d)})")
        self.randomize()
        label = d[self.label_key]
        h, w = (int(s) for s in label.shape[-2:])
        box = None if self._whole else box_from_mask(label)
        if box is None:
            d[self.box_key] = whole_image_box(h, w)
            return d
        pushed = box + np.array([-1, -1, 1, 1]) * self._offsets
        d[self.box_key] = torch.as_tensor(np.clip(pushed, 0, [w, h, w, h]), dtype=torch.float32)
        return d


class WholeImageBoxd(MapTransform):
    """Whole-image box ``[0, 0, W, H]`` of the current image: the prompt when no mask is known."""

    def __init__(self, image_key: str = "image", box_key: str = "box", allow_missing_keys: bool = False) -> None:
        super().__init__(image_key, allow_missing_keys)
        self.image_key, self.box_key = image_key, box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"WholeImageBoxd: key {self.image_key!r} not in data (keys: {list(d)})")
        h, w = (int(s) for s in d[self.image_key].shape[-2:])
        d[self.box_key] = whole_image_box(h, w)
        return d
