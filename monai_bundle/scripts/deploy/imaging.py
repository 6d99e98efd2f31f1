"""The segmenter's image operations in numpy: the resampling torch does and the mask clean-up MONAI does.

Why by hand: the torch-free predictor must give the masks the torch route gives, and neither numpy nor
onnxruntime has these operations (scipy would, but is one more multi-MB dependency in Slicer's Python).
Each function states what it reproduces; ``tests/test_onnx_predictor.py`` checks them against torch/MONAI.
"""

from __future__ import annotations

import numpy as np


def _weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """(out, in) interpolation weights of torch's ``F.interpolate(mode="bilinear", align_corners=False)``.

    With ``antialias`` and fewer output than input pixels, the triangle filter is widened by the scale, as
    torch (and PIL) do; otherwise this is plain linear interpolation with edge clamping.
    """
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    if antialias and scale > 1.0:
        support, inv = scale, 1.0 / scale
        for i in range(out_size):
            center = scale * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
            taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * inv))
            weights[i, lo:hi] = taps / taps.sum()
        return weights.astype(np.float32)
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    rows = np.arange(out_size)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights.astype(np.float32)


def resize(image: np.ndarray, height: int, width: int, antialias: bool = False) -> np.ndarray:
    """Bilinear resize of a 2-D array (or of each channel of a ``C x H x W`` one) to ``height x width``."""
    wy = _weights(image.shape[-2], height, antialias)
    wx = _weights(image.shape[-1], width, antialias)
    return (wy @ image.astype(np.float32) @ wx.T).astype(np.float32)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, first column, last column + 1) of every horizontal run of True pixels, row by row."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(edges == 1)
    _, ends_c = np.nonzero(edges == -1)
    return starts_r, starts_c, ends_c


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a 2-D boolean mask, on its runs: (component id per run, runs).

    Why runs: a lung mask has a few runs per row, so a union-find over runs is fast in plain Python even
    for a 4000 x 4000 image, where a per-pixel flood fill would not be.
    """
    rows, starts, ends = _runs(mask)
    parent = np.arange(len(rows))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_begin = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        j = row_begin[r - 1]
        for i in range(row_begin[r], row_begin[r + 1]):
            # runs of the previous row that touch [start - 1, end] (8-connectivity), scanned in order
            while j < row_begin[r] and ends[j] < starts[i]:
                j += 1
            k = j
            while k < row_begin[r] and starts[k] <= ends[i]:
                a, b = find(i), find(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    roots = np.array([find(i) for i in range(len(rows))], dtype=np.int64)
    return roots, np.stack([rows, starts, ends], axis=1) if len(rows) else np.zeros((0, 3), dtype=np.int64)


def _paint(shape: tuple[int, int], runs: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for r, s, e in runs:
        out[r, s:e] = True
    return out


def keep_largest(mask: np.ndarray, count: int = 2, keep_ties: bool = False) -> np.ndarray:
    """The ``count`` largest 8-connected components (MONAI's ``KeepLargestConnectedComponent``).

    ``keep_ties`` also keeps every component as large as the ``count``-th: MONAI's unstable argsort picks one of
    equal-sized components arbitrarily, and a choice that depends on the sort cannot be reproduced elsewhere.
    """
    roots, runs = label_components(mask)
    if len(runs) == 0:
        return np.zeros_like(mask, dtype=bool)
    ids = np.unique(roots)
    sizes = np.bincount(np.searchsorted(ids, roots), weights=runs[:, 2] - runs[:, 1])
    order = np.argsort(-sizes, kind="stable")
    kept = ids[sizes >= sizes[order[min(count, len(ids)) - 1]]] if keep_ties else ids[order[:count]]
    return _paint(mask.shape, runs[np.isin(roots, kept)])


def refined_box(low_res_logits: np.ndarray, margin: float) -> np.ndarray | None:
    """The two-pass prompt's second box: around the first pass's two largest components, pushed out by ``margin``.

    Both routes (the torch segmenter and the torch-free predictor) call this one function, so they derive the
    same box from the same mask. Components tied with the second largest are all kept (``keep_largest``), as
    the lungs split into equal pieces would otherwise be kept or dropped by chance. None for an empty first pass.
    """
    return bounding_box(keep_largest(low_res_logits > 0, 2, keep_ties=True), margin)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not 8-connected to the image border becomes foreground (MONAI's ``FillHoles``)."""
    background = ~mask
    roots, runs = label_components(background)
    if len(runs) == 0:
        return mask.copy()
    h, w = mask.shape
    touches = (runs[:, 0] == 0) | (runs[:, 0] == h - 1) | (runs[:, 1] == 0) | (runs[:, 2] == w)
    open_ids = np.unique(roots[touches])
    return ~_paint(mask.shape, runs[np.isin(roots, open_ids)])


def bounding_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
    """``[x0, y0, x1, y1]`` (exclusive ends) of the mask, pushed out by ``margin`` and clipped; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    box = np.array([cols[0] - margin, rows[0] - margin, cols[-1] + 1 + margin, rows[-1] + 1 + margin], dtype=np.float64)
    return np.clip(box, 0, [w, h, w, h]).astype(np.float32)


__all__ = ["bounding_box", "fill_holes", "keep_largest", "label_components", "refined_box", "resize"]
