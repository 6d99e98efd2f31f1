"""Contour overlays for visual QA of lung masks: reference in green, prediction in red.

Why contours rather than filled masks: on a chest X-ray a filled mask hides the rib and
diaphragm edges one needs to see to judge a boundary error. Why not ``monai.visualize.blend_images``:
it blends a filled label map; the contours come from MONAI's ``LabelToContour`` and are painted in
flat colours. PIL draws the grid and captions (no matplotlib); every file goes through an atomic rename.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import LabelToContour
from PIL import Image, ImageDraw, ImageFont
from scripts.atomic import atomic_path
from scripts.evaluation.metrics import binarise, dice_score

GREEN = (0, 255, 0)
RED = (255, 0, 0)


def _to_2d_float(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image, dtype=np.float32)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image (H, W) or (1, H, W), got shape {arr.shape}")
    return arr


_CONTOUR = LabelToContour()


def contour(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a binary mask (MONAI's ``LabelToContour``; the image border closes it)."""
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None]
    return np.asarray(_CONTOUR(mask)[0]) > 0


def overlay_rgb(image2d: Any, pred2d: Any, label2d: Any | None = None) -> np.ndarray:
    """(H, W, 3) uint8: image in gray, reference contour green, prediction contour red (on top)."""
    img = np.clip(np.nan_to_num(_to_2d_float(image2d)), 0.0, 1.0)
    pred = binarise(pred2d).numpy()
    if pred.shape != img.shape:
        raise ValueError(f"pred {pred.shape} and image {img.shape} differ in shape")
    rgb = np.repeat((img * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    if label2d is not None:
        label = binarise(label2d).numpy()
        if label.shape != img.shape:
            raise ValueError(f"label {label.shape} and image {img.shape} differ in shape")
        rgb[contour(label)] = GREEN
    rgb[contour(pred)] = RED
    return rgb


def _draw_caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any) -> None:
    """White text on a black box, readable on any part of an X-ray."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def _save_png(img: Image.Image, out_path: str | os.PathLike) -> None:
    with atomic_path(out_path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def _resize_item(item: Mapping[str, Any], tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image bilinear, masks nearest, to ``tile`` x ``tile``: contours are drawn after resizing
    so they stay one pixel wide and visible however large the source image was."""

    def mask_resized(m: Any) -> np.ndarray:
        pil = Image.fromarray(binarise(m).numpy().astype(np.uint8) * 255)
        return np.asarray(pil.resize((tile, tile), Image.Resampling.NEAREST)) > 127

    img = np.clip(np.nan_to_num(_to_2d_float(item["image"])), 0.0, 1.0)
    img_r = np.asarray(Image.fromarray(img).resize((tile, tile), Image.Resampling.BILINEAR))
    label = item.get("label")
    return img_r, mask_resized(item["pred"]), None if label is None else mask_resized(label)


def save_overlay_grid(
    items: Sequence[Mapping[str, Any]],
    out_path: str | os.PathLike,
    cols: int = 4,
    tile_size: int = 256,
) -> None:
    """Tile several overlays (``tile_size`` square each) with an "id  dice=…" caption under each.

    Each item: ``image``, ``pred``, optional ``label``, optional ``id`` (else its index) and
    optional ``dice`` (else computed from pred/label when a label is given). Tiles are square,
    so non-square images are stretched; fine for QA of near-square chest X-rays.
    """
    if not items:
        raise ValueError("no items to tile")
    cols = max(1, min(int(cols), len(items)))
    rows = -(-len(items) // cols)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, _, bottom = probe.textbbox((0, 0), "Ag0.9", font=font)
    caption_h = bottom - top + 8
    grid = Image.new("RGB", (cols * tile_size, rows * (tile_size + caption_h)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for i, item in enumerate(items):
        img, pred, label = _resize_item(item, tile_size)
        x, y = (i % cols) * tile_size, (i // cols) * (tile_size + caption_h)
        grid.paste(Image.fromarray(overlay_rgb(img, pred, label)), (x, y))
        dice = item.get("dice")
        if dice is None and item.get("label") is not None:
            dice = dice_score(item["pred"], item["label"])
        name, score = str(item.get("id", i)), ("" if dice is None else f"  dice={float(dice):.3f}")
        # keep the score; clip long ids so captions don't run into the next tile (ASCII "...":
        # PIL's fallback bitmap font is Latin-1 only)
        full, cut = name, len(name)
        while cut > 1 and draw.textlength(name + score, font=font) > tile_size - 8:
            cut -= 1
            name = full[:cut] + "..."
        caption = name + score
        draw.text((x + 4, y + tile_size + 4 - top), caption, fill=(255, 255, 255), font=font)
    _save_png(grid, out_path)
