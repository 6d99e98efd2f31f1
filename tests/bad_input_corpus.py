"""A generated corpus of bad and awkward inputs, each with the outcome every entry point must give.

Built from one real JSRT radiograph and its SCR mask, so the "awkward but valid" entries are real
chest X-rays in another encoding, and the bad ones are what hospital folders really contain.
``expect`` is ``"ok"`` (a correct result) or a regular expression the error must match; every error
must also name the file, which the tests check separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from dicom_writer import make_dicom
from PIL import Image

HUGE_SIDE = 8000
# the list, in build order; "good" is the untouched radiograph the others are compared with
ENTRY_NAMES = (
    "good", "truncated_png", "zero_byte", "wrong_extension_png_as_jpg", "wrong_extension_text_as_png", "one_pixel",
    "huge_8000", "png_16bit", "rgba", "palette", "dicom_monochrome2", "dicom_monochrome1", "dicom_no_pixel_data",
    "ct_volume_3d", "nan_inf_nifti", "all_black", "mask_size_differs", "empty_mask", "non_binary_mask",
)


@dataclass(frozen=True)
class Entry:
    name: str
    image: Path
    mask: Path
    expect: str  # "ok" or a regex of the error
    mask_problem: bool = False  # only entry points that read masks (training, evaluation) see the problem

    @property
    def bad_file(self) -> Path:
        return self.mask if self.mask_problem else self.image


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _nifti(path: Path, arr: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, np.diag([0.5, 0.5, 2.0, 1.0])), str(path))
    return path


def build_corpus(folder: Path, image_png: Path, mask_png: Path) -> list[Entry]:
    """Write every entry under ``folder`` (images/ and masks/) and return them in a fixed order."""
    img_dir, mask_dir = folder / "images", folder / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    gray = np.asarray(Image.open(image_png).convert("L"))
    mask = (np.asarray(Image.open(mask_png)) > 0).astype(np.uint8) * 255
    h, w = gray.shape
    entries: list[Entry] = []

    def add(name: str, image: Path, expect: str, mask_arr: np.ndarray | None = None, mask_problem: bool = False) -> None:
        mask_path = _png(mask_dir / f"{name}_mask.png", mask if mask_arr is None else mask_arr)
        entries.append(Entry(name, image, mask_path, expect, mask_problem))

    add("good", _png(img_dir / "good.png", gray), "ok")
    png_bytes = (img_dir / "good.png").read_bytes()
    (img_dir / "truncated.png").write_bytes(png_bytes[: len(png_bytes) // 2])
    add("truncated_png", img_dir / "truncated.png", r"cannot read|truncated|damaged")
    (img_dir / "zero_byte.png").write_bytes(b"")
    add("zero_byte", img_dir / "zero_byte.png", r"empty \(0 bytes\)")
    (img_dir / "png_named.jpg").write_bytes(png_bytes)
    add("wrong_extension_png_as_jpg", img_dir / "png_named.jpg", "ok")
    (img_dir / "text_named.png").write_text("patient list, not an image\n")
    add("wrong_extension_text_as_png", img_dir / "text_named.png", r"cannot read")
    add("one_pixel", _png(img_dir / "one_pixel.png", gray[:1, :1]), r"1x1 px.*at least")
    huge = np.asarray(Image.fromarray(gray).resize((HUGE_SIDE, HUGE_SIDE), Image.BILINEAR))
    huge_mask = np.asarray(Image.fromarray(mask).resize((HUGE_SIDE, HUGE_SIDE), Image.NEAREST))
    add("huge_8000", _png(img_dir / "huge.png", huge), "ok", huge_mask)
    add("png_16bit", _png(img_dir / "sixteen.png", gray.astype(np.uint16) * 257), "ok")
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    add("rgba", _png(img_dir / "rgba.png", rgba, "RGBA"), "ok")
    palette = Image.fromarray(gray).convert("P", palette=Image.ADAPTIVE, colors=256)
    palette.save(img_dir / "palette.png")
    add("palette", img_dir / "palette.png", "ok")
    stored = gray.astype(np.uint16) * 16
    add("dicom_monochrome2", make_dicom(img_dir / "mono2.dcm", stored), "ok")
    add("dicom_monochrome1", make_dicom(img_dir / "mono1.dcm", (4095 - stored).astype(np.uint16), "MONOCHROME1"), "ok")
    add("dicom_no_pixel_data", make_dicom(img_dir / "report.dcm", None, modality="SR"), r"no pixel data")
    ct = np.repeat(gray.T[:, :, None], 40, axis=2).astype(np.int16)
    add("ct_volume_3d", _nifti(img_dir / "ct.nii.gz", ct), r"3-D volume with 40 slices")
    bad_values = gray.T[:, :, None].astype(np.float32)
    bad_values[10:20, 10:20, 0] = np.nan
    bad_values[30, 30, 0] = np.inf
    add("nan_inf_nifti", _nifti(img_dir / "nan.nii.gz", bad_values), r"NaN or infinite")
    add("all_black", _png(img_dir / "black.png", np.zeros_like(gray)), r"blank")
    add("mask_size_differs", _png(img_dir / "size_differs.png", gray), r"has size \(200, 180\).*has size",
        np.asarray(Image.fromarray(mask).resize((180, 200), Image.NEAREST)), mask_problem=True)
    add("empty_mask", _png(img_dir / "empty_mask.png", gray), r"mask is empty", np.zeros_like(mask), mask_problem=True)
    labels = (mask > 0).astype(np.uint8)
    labels[:, w // 2 :] *= 2  # left lung 1, right lung 2, edges 128: any nonzero value is lung
    labels[(mask > 0) & (np.roll(mask, 1, axis=1) == 0)] = 128
    add("non_binary_mask", _png(img_dir / "non_binary.png", gray), "ok", labels)
    return entries


def write_manifest(folder: Path, entries: list[Entry]) -> Path:
    """``manifest.csv`` (image,mask) of the entries, paths relative to ``folder``."""
    lines = ["image,mask"] + [f"{e.image.relative_to(folder)},{e.mask.relative_to(folder)}" for e in entries]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["ENTRY_NAMES", "Entry", "HUGE_SIDE", "build_corpus", "write_manifest"]
