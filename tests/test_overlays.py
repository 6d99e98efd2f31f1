"""Overlay PNGs: right size, gray image, green reference and red prediction contours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adaqat.overlays import contour, overlay_rgb, save_overlay_grid

H, W = 48, 64


def masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    label = np.zeros((H, W), np.uint8)
    label[10:30, 10:30] = 1
    pred = np.zeros((H, W), np.uint8)
    pred[14:34, 20:40] = 1
    return image, pred, label


def colour_count(arr: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(arr == np.array(rgb, np.uint8), axis=-1).sum())


def test_contour_is_one_pixel_boundary():
    m = np.zeros((10, 10), bool)
    m[2:7, 2:7] = True
    assert contour(m).sum() == 16  # 5x5 square: 25 - 9 interior
    edge = np.ones((4, 4), bool)
    assert contour(edge).sum() == 12  # touches the border: still outlined


def test_overlay_size_and_colours():
    image, pred, label = masks()
    arr = overlay_rgb(torch.from_numpy(image)[None], torch.from_numpy(pred)[None], label)
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    assert colour_count(arr, (255, 0, 0)) == contour(pred).sum()  # the prediction's outline, on top
    assert 0 < colour_count(arr, (0, 255, 0)) < contour(label).sum()  # the reference's, where not covered
    # away from contours the gray image is untouched
    assert arr[40, 60, 0] == arr[40, 60, 1] == arr[40, 60, 2] == round(image[40, 60] * 255)


def test_overlay_without_label_has_no_green():
    image, pred, _ = masks()
    arr = overlay_rgb(image, pred, None)
    assert colour_count(arr, (255, 0, 0)) > 0 and colour_count(arr, (0, 255, 0)) == 0


def test_overlay_rejects_shape_mismatch():
    image, pred, label = masks()
    with pytest.raises(ValueError):
        overlay_rgb(image, pred[:-1], None)
    with pytest.raises(ValueError):
        overlay_rgb(image, pred, label[:, :-1])


def test_overlay_grid(tmp_path):
    image, pred, label = masks()
    items = [{"id": f"c{i}", "image": image, "pred": pred, "label": label} for i in range(5)]
    items[0]["dice"] = 0.5
    items[1]["id"] = "a_very_long_image_identifier_" * 3  # clipped, not an error
    out = tmp_path / "grid.png"
    save_overlay_grid(items, out, cols=3, tile_size=40)
    img = Image.open(out)
    assert img.size[0] == 3 * 40 and img.size[1] > 2 * 40  # two rows of tiles plus captions
    arr = np.asarray(img)
    assert colour_count(arr, (255, 0, 0)) > 0 and colour_count(arr, (0, 255, 0)) > 0
    with pytest.raises(ValueError):
        save_overlay_grid([], tmp_path / "empty.png")
