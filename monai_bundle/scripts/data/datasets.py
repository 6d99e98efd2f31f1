"""Datalists ({"image", "label"[, "patient"]} dicts) from a folder or a manifest, and patient-level splits.

Why: the bundle configs only name a dataset folder and a split; images of one patient must never
be in two splits (that would leak and inflate validation/test scores), and a manifest must not
be able to point outside its own dataset folder.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .archive import MANIFEST_SUFFIXES, read_manifest, tree_datalist
from .cxr_io import CXRInputError, is_supported, stem

SPLITS = ("train", "val", "test")
_PATIENT_COLUMNS = ("patientid", "patient_id", "patient")
_MASK_COLUMNS = ("mask", "label")


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CXRInputError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and is_supported(p))


def _short_list(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def datalist_from_folder(images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Images of a folder (sorted), each with the mask of the same stem (``stem.*`` or ``stem_mask.*``).

    Every image must have exactly one mask when ``masks_dir`` is given; masks may sit beside the
    images (``masks_dir == images_dir``), in which case ``*_mask`` files are not taken as images.
    """
    images_path = Path(images_dir).absolute()
    images = _image_files(images_path)
    if not images:
        raise CXRInputError(f"{images_path}: no supported images found")
    if masks_dir is None:
        return [{"image": str(p)} for p in images]
    masks_path = Path(masks_dir).absolute()
    masks: dict[str, list[Path]] = {}
    for p in _image_files(masks_path):
        masks.setdefault(stem(p), []).append(p)
    if masks_path == images_path:
        images = [p for p in images if not stem(p).endswith("_mask")]
    out, missing, ambiguous = [], [], []
    for img in images:
        found = [m for key in (stem(img), stem(img) + "_mask") for m in masks.get(key, []) if m != img]
        if not found:
            missing.append(img.name)
        elif len(found) > 1:
            ambiguous.append(f"{img.name} -> {[m.name for m in found]}")
        else:
            out.append({"image": str(img), "label": str(found[0])})
    if missing:
        raise CXRInputError(f"{masks_path}: no mask (stem.* or stem_mask.*) for images: {_short_list(missing)}")
    if ambiguous:
        raise CXRInputError(f"{masks_path}: more than one mask for images: {_short_list(ambiguous)}")
    return out


def _inside(base: Path, value: str, csv_path: Path, row: int, column: str) -> str:
    """Absolute path of ``value`` (relative to the CSV's folder), refused if it leaves that folder.

    Lexical check (normpath, not resolve) so symlinked data folders inside the dataset still work.
    """
    full = os.path.normpath(os.path.join(base, value))
    if os.path.commonpath([full, str(base)]) != str(base):
        raise CXRInputError(f"{csv_path}: row {row} {column} path {value!r} points outside {base}")
    return full


def datalist_from_manifest(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a manifest CSV (columns image, mask or label, optional patientid/patient_id/patient).

    Paths are resolved against the CSV's folder and must stay inside it; listed files must exist.
    A row with an empty mask cell gets no "label", an empty patient cell no "patient".
    """
    csv_path = Path(csv_path).absolute()
    base = Path(os.path.normpath(csv_path.parent))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = [c.strip() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CXRInputError(f"{csv_path}: cannot read manifest ({exc})") from exc
    lower = {c.lower(): c for c in columns}
    if "image" not in lower:
        raise CXRInputError(f"{csv_path}: manifest has no 'image' column (columns: {columns})")
    mask_col = next((lower[c] for c in _MASK_COLUMNS if c in lower), None)
    patient_col = next((lower[c] for c in _PATIENT_COLUMNS if c in lower), None)
    out, missing = [], []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row[lower["image"]]:
            raise CXRInputError(f"{csv_path}: row {i} has an empty image cell")
        item = {"image": _inside(base, row[lower["image"]], csv_path, i, "image")}
        if mask_col and row.get(mask_col):
            item["label"] = _inside(base, row[mask_col], csv_path, i, mask_col)
        if patient_col and row.get(patient_col):
            item["patient"] = row[patient_col]
        missing += [f"row {i}: {item[k]}" for k in ("image", "label") if k in item and not os.path.isfile(item[k])]
        out.append(item)
    if missing:
        raise CXRInputError(f"{csv_path}: listed files do not exist: {_short_list(missing)}")
    if not out:
        raise CXRInputError(f"{csv_path}: manifest lists no images")
    return out


def load_datalist(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """``dataset_dir/manifest.csv`` if present, else ``dataset_dir/images`` (+ ``masks`` if present)."""
    root = Path(dataset_dir)
    if (root / "manifest.csv").is_file():
        return datalist_from_manifest(root / "manifest.csv")
    if (root / "images").is_dir():
        masks = root / "masks"
        return datalist_from_folder(root / "images", masks if masks.is_dir() else None)
    raise CXRInputError(f"{root}: no manifest.csv and no images/ folder")


def _group_sizes(n_groups: int, fractions: Sequence[float]) -> list[int]:
    """Groups per split: rounded shares, each positive share at least one group when possible.

    Hand-written because monai.data.partition_dataset can leave a split empty or drop items.
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test), got {tuple(fractions)}")
    f = f / f.sum()
    sizes = [0, int(round(f[1] * n_groups)), int(round(f[2] * n_groups))]
    if n_groups >= int((f > 0).sum()):
        sizes = [max(s, 1) if share > 0 else s for s, share in zip(sizes, f)]
    sizes[0] = n_groups - sizes[1] - sizes[2]
    while sizes[0] < (1 if f[0] > 0 and n_groups >= 3 else 0):  # take back from the larger of val/test
        j = 1 if sizes[1] >= sizes[2] else 2
        sizes[j] -= 1
        sizes[0] += 1
    return sizes


def split_datalist(
    datalist: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    by: str = "auto",
) -> dict[str, list[dict[str, Any]]]:
    """Deterministic train/val/test split of whole groups (patients, or images).

    ``by``: "patient", "image", or "auto" (patient when every item has one). Groups are sorted
    before the seeded shuffle, so the split does not depend on the datalist's order.
    """
    if by == "auto":
        by = "patient" if datalist and all("patient" in d for d in datalist) else "image"
    if by not in ("patient", "image"):
        raise ValueError(f"by must be 'auto', 'patient' or 'image', got {by!r}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in datalist:
        key = str(item.get("patient", item["image"])) if by == "patient" else str(item["image"])
        groups.setdefault(key, []).append(item)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    sizes = _group_sizes(len(keys), fractions)
    out: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for name, size in zip(SPLITS, sizes):
        out[name] = [item for idx in order[start : start + size] for item in groups[keys[idx]]]
        start += size
    return out


def select_split(
    dataset_dir: str | os.PathLike,
    split: str,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    limit: int | None = None,
    by: str = "auto",
) -> list[dict[str, Any]]:
    """One split ("train", "val", "test", or "all") of a dataset folder; ``limit`` keeps the first N."""
    datalist = load_datalist(dataset_dir)
    if split == "all":
        chosen = list(datalist)
    elif split in SPLITS:
        chosen = split_datalist(datalist, fractions=fractions, seed=seed, by=by)[split]
    else:
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    return chosen[:limit] if limit is not None else chosen


def inference_datalist(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                       box: Sequence[float] | None = None, recursive: bool = False) -> list[dict[str, Any]]:
    """``{"image": path}`` items for files, folders and manifests (a folder contributes its supported images,
    sorted; with ``recursive`` its whole tree, masks then mirroring it: ``archive.tree_datalist``; a ``.csv``/
    ``.txt``/``.lst`` file that is not an image lists images: ``archive.read_manifest``).

    ``box`` (x0, y0, x1, y1 in pixels of each image) is attached to every item as the user's prompt.

    A missing path or a folder without images is an error naming it; an explicitly named file of an
    unsupported type is reported by the reader, with its name, when it is loaded.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    items: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and recursive:
            items += tree_datalist(path)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES and not is_supported(path):
            items += read_manifest(path)
        elif path.is_dir():
            found = _image_files(path)
            if not found:
                raise CXRInputError(f"{path}: folder contains no supported images")
            items += [{"image": str(f)} for f in found]
        elif path.is_file():
            items.append({"image": str(path)})
        else:
            raise CXRInputError(f"{path}: no such file or folder")
    if box is not None:
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box must be x0 y0 x1 y1 with x0 < x1 and y0 < y1, got {list(box)}")
        items = [{**item, "box": np.asarray(box, dtype=np.float32)} for item in items]
    return items
