"""SAM box prompts: the whole image, or a mask's bounding box (MONAI finds it) in xyxy pixels.

Boxes are float32 ``[x0, y0, x1, y1]`` with exclusive ends, so a full mask gives ``[0, 0, W, H]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box


def whole_image_box(height: int, width: int) -> torch.Tensor:
    """The box covering the whole image, ``[0, 0, W, H]`` (the prompt used at inference)."""
    return torch.tensor([0.0, 0.0, float(width), float(height)], dtype=torch.float32)


def box_from_mask(mask2d: Any, margin: float = 0, threshold: float = 0.5) -> np.ndarray | None:
    """Bounding box of ``mask2d > threshold``, pushed out by ``margin`` px and clipped to the image; None if empty.

    Accepts numpy or torch, (H, W) or (1, H, W); the threshold makes bilinearly resized masks work.
    """
    m = mask2d.detach().cpu() if isinstance(mask2d, torch.Tensor) else np.asarray(mask2d)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"box_from_mask expects a 2-D mask, got shape {tuple(m.shape)}")
    (row0, col0), (row1, col1) = generate_spatial_bounding_box(m[None], select_fn=lambda x: x > threshold)
    if row1 <= row0:
        return None
    h, w = m.shape
    box = np.array([col0 - margin, row0 - margin, col1 + margin, row1 + margin], dtype=np.float64)
    return np.clip(box, 0, [w, h, w, h]).astype(np.float32)


__all__ = ["box_from_mask", "whole_image_box"]
