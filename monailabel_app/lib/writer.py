"""The label a client gets back: uint8 label values in the geometry of the image it sent.

Plain numpy/SimpleITK/PIL (no MONAI Label import), so it is unit-tested in the core environment.
Why not MONAI Label's ``Writer``: it writes the post-processed tensor with the affine of MONAI's
loader, while our studies are loaded as 2-D (a single-slice NIfTI squeezed, a PNG with no geometry).
Here the label goes back with the input's own size, spacing, origin and direction, singleton axes
restored, as ``.nrrd``, ``.nii.gz`` or ``.png`` as the request asks (Slicer asks ``.nrrd`` uint8).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk


class UnsupportedResult(ValueError):
    """A result extension or dtype the writer cannot produce (answered 400 by the app)."""

RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".png")
RESULT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")
_DICOM_SUFFIXES = (".dcm", ".dicom")


def suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _as_2d(mask: Any) -> np.ndarray:
    arr = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W), got shape {arr.shape}")
    return arr


def reference_geometry(reference: str | os.PathLike) -> dict[str, Any]:
    """Size (x, y[, z]), spacing, origin and direction of the input (ITK's reading of NIfTI, NRRD and DICOM);
    a PNG/JPEG is 2-D with unit spacing."""
    ref = str(reference)
    if suffix(ref) in _VOLUME_SUFFIXES + _DICOM_SUFFIXES:  # a DICOM radiograph is a one-slice volume to ITK
        reader = sitk.ImageFileReader()
        reader.SetFileName(ref)
        reader.ReadImageInformation()
        return {"size": reader.GetSize(), "spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
                "direction": reader.GetDirection()}
    from PIL import Image

    with Image.open(ref) as im:  # header only
        width, height = im.size
    return {"size": (width, height), "spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}


def result_extension(reference: str, requested: str | None) -> str:
    """The requested extension (checked), else the input's own kind (``.png`` for images, else ``.nii.gz``)."""
    if requested:
        ext = requested if requested.startswith(".") else "." + requested
        if ext.lower() not in RESULT_EXTENSIONS:
            raise UnsupportedResult(f"unsupported result_extension {requested!r}; supported: {', '.join(RESULT_EXTENSIONS)}")
        return ext.lower()
    ref_suffix = suffix(reference)
    return ".nrrd" if ref_suffix in (".nrrd", ".nhdr") else ".nii.gz" if ref_suffix in _VOLUME_SUFFIXES else ".png"


def write_label(mask: Any, reference: str | os.PathLike, extension: str | None = None,
                dtype: str | None = None, out_dir: str | None = None) -> str:
    """Write ``mask`` (label values, (H, W)) like ``reference``; returns the path of a new temporary file."""
    ext = result_extension(str(reference), extension)
    if (dtype or "uint8") not in RESULT_DTYPES:
        raise UnsupportedResult(f"unsupported result_dtype {dtype!r}; supported: {', '.join(RESULT_DTYPES)}")
    label = _as_2d(mask).astype(RESULT_DTYPES[dtype or "uint8"])
    geometry = reference_geometry(reference)
    size = tuple(int(s) for s in geometry["size"])
    in_plane = tuple(s for s in reversed(size) if s > 1) if len(size) > 2 else tuple(reversed(size))
    if label.shape != in_plane:
        raise ValueError(f"label of size {label.shape} does not match the input's {in_plane}")
    fd, path = tempfile.mkstemp(suffix=ext, prefix="adaqat_label_", dir=out_dir)
    os.close(fd)
    if ext == ".png":
        from PIL import Image

        Image.fromarray(label.astype(np.uint8)).save(path, format="PNG")
        return path
    # reshape (not expand_dims) mirrors how the engine squeezed the input: singleton axes come back
    # where the input had them, so the label overlays the input voxel for voxel
    image = sitk.GetImageFromArray(label.reshape(tuple(reversed(size))), isVector=False)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, path, useCompression=ext != ".nii")
    return path


__all__ = ["UnsupportedResult", "suffix", "RESULT_DTYPES", "RESULT_EXTENSIONS", "reference_geometry", "result_extension", "write_label"]
