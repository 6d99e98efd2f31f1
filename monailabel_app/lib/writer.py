"""The label a client gets back: label values in the geometry of the image it sent, in the container it asks for.

Why not MONAI Label's ``Writer``: it writes the post-processed tensor with the affine of MONAI's loader,
while our studies are loaded as 2-D (a single-slice NIfTI squeezed, a PNG with no geometry). The engine's
own mask writer (``scripts.data.mask_write``, the one ``adaqat infer`` uses) puts the label back with the
input's size, spacing, origin and direction, singleton axes restored; here only the request is translated:
``.nrrd``, ``.nii.gz``, ``.nii`` or ``.png`` (Slicer asks ``.nrrd`` uint8), and the dtype. ``.dcm`` asks for a
DICOM Segmentation (SEG) of a DICOM input, referencing it (``scripts.data.dicom_seg``; dtype and label value do
not apply). MONAI Label's own ``output=dicom_seg`` is for a DICOMweb datastore only (it converts with
pydicom-seg and needs ``label_info``), so this app answers ``result_extension: ".dcm"`` instead.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np


class UnsupportedResult(ValueError):
    """A result extension or dtype the writer cannot produce (answered 400 by the app)."""


RESULT_FORMATS = {".nrrd": "nrrd", ".nii.gz": "nifti", ".nii": "nifti", ".png": "png", ".dcm": "dicom_seg"}
RESULT_EXTENSIONS = tuple(RESULT_FORMATS)
RESULT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


def result_extension(reference: str, requested: str | None) -> str:
    """The requested extension (checked), else the input's own kind (``.png`` for images, else ``.nii.gz``)."""
    from scripts.data.cxr_io import detect_format

    if requested:
        ext = requested if requested.startswith(".") else "." + requested
        if ext.lower() not in RESULT_FORMATS:
            raise UnsupportedResult(f"unsupported result_extension {requested!r}; supported: {', '.join(RESULT_EXTENSIONS)}")
        if RESULT_FORMATS[ext.lower()] == "dicom_seg" and detect_format(reference) != "dicom":
            raise UnsupportedResult(f"result_extension {requested!r} (DICOM SEG) needs a DICOM input; "
                                    f"{os.path.basename(reference)} is {detect_format(reference)}")
        return ext.lower()
    own = detect_format(reference)
    return ".nrrd" if own == "nrrd" else ".nii.gz" if own in ("nifti", "dicom") else ".png"


def write_label(mask: Any, reference: str | os.PathLike, extension: str | None = None,
                dtype: str | None = None, label_value: int = 1, out_dir: str | None = None) -> str:
    """Write ``mask`` ((H, W) lung mask) like ``reference`` with lung = ``label_value``; returns a new temporary file.

    Needs the bundle root on ``sys.path`` (the infer task puts it there): the engine does the writing.
    """
    from scripts.data.mask_write import write_mask_like

    ext = result_extension(str(reference), extension)
    if (dtype or "uint8") not in RESULT_DTYPES:
        raise UnsupportedResult(f"unsupported result_dtype {dtype!r}; supported: {', '.join(RESULT_DTYPES)}")
    fd, path = tempfile.mkstemp(suffix=ext, prefix="adaqat_label_", dir=out_dir)
    os.close(fd)
    try:
        written = write_mask_like(mask, reference, path, output_format=RESULT_FORMATS[ext], foreground=label_value,
                                  dtype=RESULT_DTYPES[dtype or "uint8"])
    except BaseException:
        os.unlink(path)
        raise
    return str(written)


__all__ = ["UnsupportedResult", "RESULT_DTYPES", "RESULT_EXTENSIONS", "result_extension", "write_label"]
