"""MONAI dictionary transforms for CXR loading, SAM box prompts and writing masks beside their source.

Why: the bundle configs compose these with stock MONAI transforms (Resized, RandAffined, ...);
loading goes through :mod:`.cxr_io` and writing through :mod:`.mask_write` so every format behaves
the same, and the box prompt is derived from the label after the spatial transforms, in the current
image's pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from .archive import SUBDIR_KEY
from .boxes import box_from_mask, whole_image_box
from .cxr_io import read_cxr, read_mask
from .mask_write import OUTPUT_FORMATS, default_mask_name, write_mask_like


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


class RandTextOverlayd(Randomizable, MapTransform):
    """Burn a short word into the image, as scanners and PACS exports do (side markers, "PORTABLE", dates).

    Why: radiographs from other hospitals carry bright annotations that JSRT never shows, and a model that has
    not seen them segments them. With probability ``prob``, one to three words from ``words`` are drawn at random
    places near the image border, in the image's brightest value, at a random height of 3-8 % of the image.
    Only the image changes; the label does not.
    """

    WORDS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "12/03", "CXR", "1")

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.3, words: Sequence[str] = WORDS,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob, self.words = float(prob), tuple(words)
        self._draws: list[tuple[str, float, float, float]] = []

    def randomize(self, data: Any = None) -> None:
        self._draws = []
        if self.R.random_sample() < self.prob:
            for _ in range(self.R.randint(1, 4)):
                word = self.words[self.R.randint(len(self.words))]
                # near an edge: one coordinate in the outer 15 % band, the other anywhere
                along, across = self.R.random_sample(), self.R.random_sample() * 0.15
                across = across if self.R.random_sample() < 0.5 else 0.85 + across * 0.8
                x, y = (along, across) if self.R.random_sample() < 0.5 else (across, along)
                self._draws.append((word, x, y, 0.03 + 0.05 * self.R.random_sample()))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from PIL import Image, ImageDraw, ImageFont

        d = dict(data)
        self.randomize()
        if not self._draws:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
            plane = array.reshape(array.shape[-2:])
            h, w = plane.shape
            canvas = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(canvas)
            for word, x, y, height in self._draws:
                font = ImageFont.load_default(size=max(6, int(height * h)))
                draw.text((int(x * w * 0.9), int(y * h * 0.95)), word, fill=255, font=font)
            ink = np.asarray(canvas, dtype=np.float32)[None] / 255.0
            peak = float(plane.max()) if plane.size else 1.0
            burned = np.maximum(array.reshape((1, h, w)), ink * peak).reshape(array.shape)
            d[key] = image.new_tensor(burned) if isinstance(image, torch.Tensor) else burned
            if isinstance(image, MetaTensor):
                d[key] = MetaTensor(d[key], meta=image.meta)
        return d


def reference_path(item: Mapping[Hashable, Any], ref_key: str = "image") -> str:
    """The source file of a decollated item (``meta["filename_or_obj"]`` of its image)."""
    meta = getattr(item.get(ref_key), "meta", None) or {}
    path = meta.get("filename_or_obj")
    if not path:
        raise ValueError(f"cannot tell which file {ref_key!r} came from: no filename_or_obj in its metadata")
    return str(path)


class SaveCXRMaskd(MapTransform):
    """Post-processing step that writes each binary ``pred`` with ``mask_write.write_mask_like``.

    Why not MONAI's ``SaveImaged``: it writes NIfTI/PNG from the tensor's affine, while a CXR mask must
    come back in the input's own container (DICOM, NRRD, PNG...) and geometry, read from the source file.
    ``output_format`` (``mask_write.OUTPUT_FORMATS``, e.g. ``dicom_seg``) asks for another container; None or
    ``"auto"`` keeps the input's own. An item's ``subdir`` (``archive.tree_datalist``) puts its mask in that
    folder under ``output_dir``, mirroring the input tree. The written path is stored in ``data["pred_path"]``.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str = "./predictions", ref_key: str = "image",
                 output_format: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.ref_key = ref_key
        self.output_format = None if output_format in (None, "", "auto") else output_format
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format {output_format!r} is not one of auto, {', '.join(OUTPUT_FORMATS)}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = reference_path(d, self.ref_key)
        for key in self.key_iterator(d):
            mask = d[key]
            mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            out = self.output_dir / str(d.get(SUBDIR_KEY) or "") / default_mask_name(source, self.output_format)
            d[f"{key}_path"] = str(write_mask_like((mask.reshape(mask.shape[-2:]) > 0).astype(np.uint8), source, out,
                                                   output_format=self.output_format))
        return d


__all__ = ["BoxFromMaskd", "LoadCXRd", "RandTextOverlayd", "SaveCXRMaskd", "reference_path"]
