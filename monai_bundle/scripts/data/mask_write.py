"""Writing a lung mask in the geometry of the image it came from: the reference's own format, or one asked for.

Why: a mask is only useful beside its image. PNG/JPEG exports get a PNG, a DICOM CR/DX a DICOM, NIfTI and
NRRD the same container with spacing, origin and direction copied, and a single-slice volume its slice
axis back. Callers that need another container (the MONAI Label server answers ``.nrrd`` to Slicer) ask
for it with ``output_format``; the geometry still comes from the reference. ``dicom_seg`` (for a DICOM
reference only) writes a DICOM Segmentation object instead of a DICOM image (``dicom_seg.py``). Every
file is written atomically. Bad input raises :class:`~.cxr_io.CXRInputError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from .cxr_io import CXRInputError, check_file, detect_format, first_line, stem, suffix

OUTPUT_FORMATS = ("png", "nifti", "nrrd", "dicom", "dicom_seg")
# Suffix written for each format. JPEG is lossy, so its mask is a PNG; a detached NRRD header (.nhdr)
# would need a second data file that cannot be renamed atomically together with the header, so its
# mask is an attached .nrrd; NIfTI keeps the reference's .nii or .nii.gz.
_SUFFIX = {"png": ".png", "nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ".dcm", "dicom_seg": ".dcm"}
_FORMAT_OF_SUFFIX = {".png": "png", ".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".dcm": "dicom"}
# The name part before the suffix: a SEG is ``<stem>_seg.dcm``, so it never overwrites (or is taken for)
# the DICOM image mask ``<stem>_mask.dcm`` of the same input.
_NAME_TAG = {"dicom_seg": "_seg"}
MASK_SERIES_DESCRIPTION = "AdaQAT lung mask"
QUALITY_REPORT_SUFFIX = ".quality.json"  # a mask's quality report, and a model's calibration (scripts.deploy.quality)


def mask_format(reference_path: str | os.PathLike, output_format: str | None = None) -> str:
    """The format a mask of ``reference_path`` is written in: ``output_format``, else the reference's own (a DICOM
    image's is a DICOM Segmentation, what PACS viewers and Slicer's DICOM module load beside the image; ``dicom``
    asks for the older secondary-capture-like image mask)."""
    ref_format = detect_format(reference_path)
    own = {"jpeg": "png", "dicom": "dicom_seg"}.get(ref_format, ref_format)
    chosen = output_format or own
    if chosen not in OUTPUT_FORMATS:
        raise ValueError(f"output format {chosen!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if chosen in ("dicom", "dicom_seg") and ref_format != "dicom":
        kind = "DICOM SEG" if chosen == "dicom_seg" else "DICOM mask"
        raise ValueError(f"{reference_path}: a {kind} needs a DICOM reference image, not {ref_format}")
    return chosen


def default_mask_name(reference_path: str | os.PathLike, output_format: str | None = None) -> str:
    """Output name for the mask of ``reference_path``: stem + ``_mask`` (``_seg`` for a DICOM SEG) + the suffix
    it is written with."""
    fmt = mask_format(reference_path, output_format)
    ref_suffix = suffix(reference_path)
    keep = fmt == "nifti" and ref_suffix in (".nii", ".nii.gz")
    return f"{stem(reference_path)}{_NAME_TAG.get(fmt, '_mask')}{ref_suffix if keep else _SUFFIX[fmt]}"


def quality_report_path(mask_path: str | os.PathLike) -> Path:
    """The quality report written beside a mask (``scripts.deploy.quality``): ``x_mask.png`` -> ``x_mask.quality.json``."""
    path = Path(mask_path)
    name = path.name
    for ending in (".nii.gz", path.suffix):
        if ending and name.endswith(ending):
            name = name[: -len(ending)]
            break
    return path.with_name(name + QUALITY_REPORT_SUFFIX)


def check_output_format(datalist: list[dict], output_format: str | None, key: str = "image") -> list[dict]:
    """Refuse a run whose inputs cannot be written as ``output_format`` (e.g. ``dicom_seg`` for a PNG) before any
    model is loaded: one ValueError line naming the first such file (and how many there are); else the datalist."""
    if output_format in (None, "", "auto"):
        return datalist
    errors = []
    for item in datalist:
        try:
            mask_format(item[key], output_format)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        more = f" (and {len(errors) - 1} more input(s) like it)" if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}; choose another --output-format")
    return datalist


def _output_path(out_path: Path, fmt: str) -> Path:
    """``out_path`` with a suffix that matches the written format (e.g. .jpg -> .png, .nhdr -> .nrrd)."""
    suf = suffix(out_path)
    if _FORMAT_OF_SUFFIX.get(suf) == fmt or (fmt == "dicom_seg" and suf == ".dcm"):
        return out_path
    name = out_path.name[: len(out_path.name) - len(suf)] if suf else out_path.name
    return out_path.with_name(name + _SUFFIX[fmt])


def _binary(mask: Any, reference: Path) -> np.ndarray:
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    while m.ndim > 2 and m.shape[0] == 1:  # tolerate (1, H, W) straight from a channel-first pipeline
        m = m[0]
    if m.ndim != 2:
        raise CXRInputError(f"mask for {reference} must be 2-D (H, W), got shape {m.shape}")
    return (m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0).astype(np.uint8)


def _check_shape(mask: np.ndarray, shape: tuple[int, ...], reference: Path) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise CXRInputError(f"mask of size {tuple(mask.shape)} does not match reference {reference} of size {tuple(shape)}")


def _reference_info(ref: Path) -> sitk.ImageFileReader:
    """The reference's size, spacing, origin and direction as ITK reads them (header only, no pixels)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ref))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CXRInputError(f"{ref}: cannot read reference image ({first_line(exc)})") from exc
    return reader


def _in_plane(size: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W) of an ITK size (x, y[, z...]): the axes longer than one, as the reader squeezed them."""
    return tuple(s for s in reversed(size) if s > 1) if len(size) > 2 else tuple(reversed(size))


def write_mask_like(mask: Any, reference_path: str | os.PathLike, out_path: str | os.PathLike,
                    output_format: str | None = None, foreground: int | None = None,
                    dtype: type | np.dtype = np.uint8) -> Path:
    """Write a binary (H, W) mask in the reference's geometry; returns the path written.

    ``output_format`` (``png``, ``nifti``, ``nrrd``, ``dicom``, ``dicom_seg``) defaults to the reference's own format
    (JPEG -> PNG). ``foreground`` is the value of lung pixels (default 255 in a PNG, 1 elsewhere);
    ``dtype`` the stored type (uint8 or uint16). NIfTI/NRRD: spacing, origin and direction copied, a
    squeezed single-slice volume written back 3-D with the reference's shape. DICOM: a copy of the
    reference dataset with the mask as MONOCHROME2 pixel data (uint8 or uint16 following its
    BitsAllocated), window 0..1, new Series/SOP Instance UIDs. DICOM SEG: a binary Segmentation with one
    segment "lung" referencing the source (``dicom_seg.write_dicom_seg``; ``foreground`` and ``dtype`` do
    not apply). The suffix of ``out_path`` is corrected when it does not fit the written format.
    """
    ref = Path(reference_path)
    check_file(ref)
    fmt = mask_format(ref, output_format)
    binary = _binary(mask, ref)
    out = _output_path(Path(out_path), fmt)
    if fmt == "dicom":
        _write_dicom(binary, ref, out)
        return out
    if fmt == "dicom_seg":
        from .dicom_seg import write_dicom_seg

        return write_dicom_seg(binary, ref, out)[0]
    label = (binary * (foreground if foreground is not None else 255 if fmt == "png" else 1)).astype(dtype)
    if fmt == "png":
        _write_png(label, ref, out)
    else:
        _write_sitk(label, ref, out)
    return out


def _write_png(label: np.ndarray, ref: Path, out: Path) -> None:
    from PIL import Image

    if detect_format(ref) in ("png", "jpeg"):
        with Image.open(ref) as im:  # header only: size without decoding pixels
            width, height = im.size
        shape: tuple[int, ...] = (height, width)
    else:
        shape = _in_plane(_reference_info(ref).GetSize())
    _check_shape(label, shape, ref)
    with atomic_path(out) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")


def _write_sitk(label: np.ndarray, ref: Path, out: Path) -> None:
    info = _reference_info(ref)
    size = info.GetSize()
    _check_shape(label, _in_plane(size), ref)
    # Reinserting the singleton axes by reshape mirrors the reader's squeeze, so a (1, H, W) or
    # (H, 1, W) reference gets its mask back in the same index layout.
    img = sitk.GetImageFromArray(label.reshape(tuple(reversed(size))), isVector=False)
    img.SetSpacing(info.GetSpacing())
    img.SetOrigin(info.GetOrigin())
    img.SetDirection(info.GetDirection())
    with atomic_path(out) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=suffix(out) != ".nii")


def _write_dicom(mask: np.ndarray, ref: Path, out: Path) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    try:
        ds = pydicom.dcmread(ref)
    except Exception as exc:
        raise CXRInputError(f"{ref}: cannot read reference DICOM ({exc})") from exc
    _check_shape(mask, (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))), ref)
    dtype = np.uint16 if int(ds.get("BitsAllocated", 8)) > 8 else np.uint8
    # Elements describing the old pixel values would misdescribe the mask: drop them.
    for kw in (
        "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "VOILUTSequence",
        "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
        "PresentationLUTShape", "LossyImageCompression", "LossyImageCompressionRatio",
        "LossyImageCompressionMethod", "PixelPaddingValue", "PixelPaddingRangeLimit",
        "SmallestImagePixelValue", "LargestImagePixelValue", "RedPaletteColorLookupTableDescriptor",
        "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
        "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
        "ICCProfile", "FloatPixelData", "DoubleFloatPixelData",
    ):
        if kw in ds:
            delattr(ds, kw)
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or not tsyntax.is_transfer_syntax or not tsyntax.is_little_endian:
        # set_pixel_data cannot write big endian; an unknown syntax cannot be trusted either
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(mask.astype(dtype), photometric_interpretation="MONOCHROME2", bits_stored=8 if dtype == np.uint8 else 16)
    ds.WindowCenter, ds.WindowWidth = 0.5, 1  # so a viewer shows 0/1 as black/white
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = MASK_SERIES_DESCRIPTION
    ds.ImageType = ["DERIVED", "SECONDARY"]
    with atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


__all__ = ["MASK_SERIES_DESCRIPTION", "OUTPUT_FORMATS", "check_output_format", "default_mask_name", "mask_format", "QUALITY_REPORT_SUFFIX", "quality_report_path",
           "write_mask_like"]
