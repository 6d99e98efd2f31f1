"""Reading and writing one chest X-ray (CXR) and its lung mask, whatever the file format.

Why: users bring PNG/JPEG exports, DICOM CR/DX from the scanner, or NIfTI/NRRD from research
pipelines. Every path into the model goes through :func:`read_cxr` (one 2-D float32 image in
[0, 1], rows = H, cols = W, in SimpleITK's array order) and every mask goes back out through
:func:`write_mask_like`, so the mask lands in the reference image's own format and geometry.
Bad input raises :class:`CXRInputError` naming the file, never a bare library traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".dcm",
    ".dicom",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".nhdr",
)
_FORMAT_BY_SUFFIX = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
}
# Suffix a mask gets for each reference format. JPEG is lossy, so its mask is a PNG; a detached
# NRRD header (.nhdr) would need a second data file that cannot be renamed atomically together
# with the header, so its mask is an attached .nrrd.
_MASK_SUFFIX = {"png": ".png", "jpeg": ".png", "dicom": ".dcm", "nifti": None, "nrrd": ".nrrd"}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights PIL's "L" conversion uses
_PERCENTILES = (0.5, 99.5)
MASK_SERIES_DESCRIPTION = "AdaQAT lung mask"


class CXRInputError(ValueError):
    """An input file that cannot be used as a 2-D chest X-ray or mask; the message names the file."""


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_supported(path: str | os.PathLike) -> bool:
    """True for a supported suffix, or an extension-less file with a DICOM preamble (PACS exports)."""
    p = Path(path)
    if _suffix(p) in _FORMAT_BY_SUFFIX:
        return True
    return p.suffix == "" and p.is_file() and _has_dicom_preamble(p)


def detect_format(path: str | os.PathLike) -> str:
    """Format name (png/jpeg/dicom/nifti/nrrd) from the suffix; raises CXRInputError if unknown."""
    p = Path(path)
    fmt = _FORMAT_BY_SUFFIX.get(_suffix(p))
    if fmt is None and p.suffix == "" and _has_dicom_preamble(p):
        fmt = "dicom"
    if fmt is None:
        raise CXRInputError(
            f"{p}: unknown file type {p.suffix or '(no extension)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return fmt


def stem(path: str | os.PathLike) -> str:
    """File name without its (possibly double, e.g. .nii.gz) image suffix."""
    name = Path(path).name
    suf = _suffix(name)
    return name[: len(name) - len(suf)] if suf in _FORMAT_BY_SUFFIX else Path(name).stem


def default_mask_name(reference_path: str | os.PathLike) -> str:
    """Output name for the mask of ``reference_path``: stem + ``_mask`` + the suffix it is written with."""
    fmt = detect_format(reference_path)
    suffix = _MASK_SUFFIX[fmt] or _suffix(reference_path)  # NIfTI keeps .nii or .nii.gz
    return f"{stem(reference_path)}_mask{suffix}"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CXRInputError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CXRInputError(f"{path}: file is empty (0 bytes)")


def _bit_depth(dtype: np.dtype) -> int | None:
    return dtype.itemsize * 8 if np.issubdtype(dtype, np.integer) else None


def _squeeze_to_2d(arr: np.ndarray, path: Path, n_channels: int, slices: int) -> tuple[np.ndarray, bool]:
    """Drop singleton spatial axes of a 3-D+ array; a real volume is an error.

    ``arr`` is spatial axes (numpy order) plus a trailing channel axis when ``n_channels > 1``.
    """
    spatial = arr.shape[: arr.ndim - (1 if n_channels > 1 else 0)]
    if len(spatial) <= 2:
        return arr, False
    keep = [s for s in spatial if s > 1]
    if len(keep) > 2:
        raise CXRInputError(f"{path}: 3-D volume with {slices} slices; a 2-D radiograph is expected")
    if len(keep) < 2:
        raise CXRInputError(f"{path}: image of size {tuple(reversed(spatial))} is not a 2-D radiograph")
    # reshape (not squeeze) keeps the order of the remaining axes, and write_mask_like undoes it
    # the same way from the reference's size.
    return arr.reshape(tuple(keep) + arr.shape[len(spatial) :]), True


def _check_nifti_data(path: Path) -> None:
    """Read the voxel data once more through nibabel, which ITK's NIfTI reader does not replace:
    ITK only prints an error for a truncated file (returning partial data) and reads NaN/Inf voxels
    as finite numbers, so both would go unnoticed."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises OSError, EOFError, zlib.error, HeaderDataError, ...
        raise CXRInputError(f"{path}: damaged or truncated NIfTI file ({str(exc).splitlines()[0]})") from exc
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise CXRInputError(f"{path}: image contains NaN or infinite values")


def _read_sitk(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    if fmt == "nifti":
        _check_nifti_data(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if fmt == "png":  # e.g. grey+alpha PNGs, which ITK's PNG reader rejects
            return _read_pil(path)
        raise CXRInputError(f"{path}: cannot read {fmt} file ({_first_line(exc)})") from exc
    n_channels = img.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(img)
    size = img.GetSize()
    slices = int(np.prod(size[2:])) if len(size) > 2 else 1
    arr, squeezed = _squeeze_to_2d(arr, path, n_channels, slices)
    return arr, {"squeezed_3d": squeezed, "components": n_channels, "sitk_size": tuple(size)}


def _read_pil(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """PIL reader: JPEG (ITK's libjpeg only warns on a truncated file and fills it grey; PIL raises)
    and the PNG modes ITK cannot read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CXRInputError(f"{path}: cannot read image ({exc})") from exc
    n_channels = arr.shape[2] if arr.ndim == 3 else 1
    return arr, {"squeezed_3d": False, "components": n_channels}


def _read_dicom(path: Path, rescale: bool) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom < 3, as pinned beside monailabel (.venv-monailabel)
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error, ...)
        raise CXRInputError(f"{path}: cannot read DICOM file ({exc})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRInputError(f"{path}: DICOM file has no pixel data (not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CXRInputError(f"{path}: 3-D volume with {frames} slices; a 2-D radiograph is expected")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # truncated pixel data, missing decoder plugin, bad header, ...
        raise CXRInputError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    n_channels = int(ds.get("SamplesPerPixel", 1))
    arr = apply_modality_lut(raw, ds) if rescale and n_channels == 1 else raw
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    header = {
        "squeezed_3d": False,
        "components": n_channels,
        "dtype": str(raw.dtype),
        "bit_depth": int(ds.get("BitsStored", _bit_depth(raw.dtype) or 0)) or None,
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")),
    }
    return arr, header


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if "ERROR" in ln] or str(exc).splitlines() or [""]
    return lines[-1].strip()


def _read_raw(path: str | os.PathLike, rescale: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixel array (H, W) or (H, W, C) as stored, plus header; shared by images and masks."""
    p = Path(path)
    _check_file(p)
    fmt = detect_format(p)
    if fmt == "dicom":
        arr, extra = _read_dicom(p, rescale)
    elif fmt == "jpeg":
        arr, extra = _read_pil(p)
    else:
        arr, extra = _read_sitk(p, fmt)
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise CXRInputError(f"{p}: pixel array of shape {arr.shape} is not a 2-D image")
    header: dict[str, Any] = {
        "path": str(p),
        "format": fmt,
        "shape": (int(arr.shape[0]), int(arr.shape[1])),
        "dtype": str(arr.dtype),
        "bit_depth": _bit_depth(arr.dtype),
    }
    header.update(extra)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise CXRInputError(f"{p}: image contains NaN or infinite values")
    return arr, header


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """Luminance of RGB(A); alpha and a grey+alpha second channel are ignored."""
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.shape[2] >= 3:
        return arr[..., :3].astype(np.float64) @ _LUMA
    return arr[..., 0].astype(np.float64)


def scale_intensity(arr: np.ndarray) -> np.ndarray:
    """Clip at the 0.5/99.5 percentiles, then min-max to [0, 1]; a constant image gives zeros.

    Hand-written (numpy, not MONAI's ScaleIntensityRangePercentiles) so this I/O module does not
    import MONAI, and a constant image is all zeros without a divide-by-zero warning.
    """
    lo, hi = np.percentile(arr, _PERCENTILES)
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((np.clip(arr, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def read_cxr(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one CXR as float32 (H, W) in [0, 1] (MONOCHROME1 inverted) plus a small header dict.

    Header keys: path, format, shape, squeezed_3d, dtype, bit_depth (None for float), components,
    inverted (True for a MONOCHROME1 DICOM).
    """
    arr, header = _read_raw(path, rescale=True)
    img = scale_intensity(_to_gray(arr))
    header["inverted"] = header.get("photometric") == "MONOCHROME1"
    if header["inverted"]:
        # MONOCHROME1: high values are dark; flip so bone is bright as in MONOCHROME2 and PNG exports
        if img.any():  # a constant image stays all zeros
            img = (1.0 - img).astype(np.float32)
    return img, header


def read_mask(
    path: str | os.PathLike,
    expected_shape: tuple[int, int] | None = None,
    reference: str | os.PathLike | None = None,
) -> np.ndarray:
    """Read a mask as uint8 {0, 1} (H, W): any nonzero stored value (any colour channel) is 1.

    Stored values are used without DICOM rescale, and palette PNGs by index, because a mask holds
    labels, not intensities. ``reference`` (the image path) only makes the size-mismatch message clearer.
    """
    p = Path(path)
    if detect_format(p) == "png":
        arr = _palette_indices(p)
        if arr is None:
            arr, _ = _read_raw(p, rescale=False)
    else:
        arr, _ = _read_raw(p, rescale=False)
    if arr.ndim == 3:
        n = 3 if arr.shape[2] >= 3 else 1  # ignore alpha
        mask = (arr[..., :n] != 0).any(axis=2)
    else:
        mask = arr != 0
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape):
        ref = f" image {reference}" if reference is not None else " the image"
        raise CXRInputError(
            f"mask {p} has size {tuple(mask.shape)} (H, W) but{ref} has size {tuple(expected_shape)}"
        )
    return mask.astype(np.uint8)


def _palette_indices(path: Path) -> np.ndarray | None:
    """Palette-PNG indices (labels), or None when the PNG is not a palette image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            im.load()
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CXRInputError(f"{path}: cannot read mask image ({exc})") from exc


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _output_path(out_path: Path, fmt: str) -> Path:
    """``out_path`` with a suffix that matches the written format (e.g. .jpg -> .png, .nhdr -> .nrrd)."""
    suf = _suffix(out_path)
    written = "png" if fmt == "jpeg" else fmt
    if _FORMAT_BY_SUFFIX.get(suf) == written and suf != ".nhdr":
        return out_path
    wanted = _MASK_SUFFIX.get(fmt) or ".nii.gz"
    name = out_path.name[: len(out_path.name) - len(suf)] if suf else out_path.name
    return out_path.with_name(name + wanted)


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


def write_mask_like(mask: np.ndarray, reference_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write a binary (H, W) mask in the reference image's format and geometry; returns the path written.

    PNG/JPEG -> 8-bit PNG 0/255 (a JPEG reference gets a lossless .png mask). NIfTI/NRRD -> same
    format, uint8 0/1, spacing/origin/direction copied (a squeezed single-slice volume is written
    back 3-D with the reference's shape; a .nhdr reference gets an attached .nrrd). DICOM -> copy of
    the reference dataset with the mask as MONOCHROME2 pixel data 0/1 (uint8 or uint16 following
    the reference's BitsAllocated), window 0..1, new Series/SOP Instance UIDs. The suffix of
    ``out_path`` is corrected when it does not fit the written format.
    """
    ref = Path(reference_path)
    fmt = detect_format(ref)
    _check_file(ref)
    m = _binary(mask, ref)
    out = _output_path(Path(out_path), fmt)
    if fmt in ("png", "jpeg"):
        _write_png(m, ref, out)
    elif fmt == "dicom":
        _write_dicom(m, ref, out)
    else:
        _write_sitk(m, ref, out)
    return out


def _write_png(mask: np.ndarray, ref: Path, out: Path) -> None:
    from PIL import Image

    with Image.open(ref) as im:  # header only: size without decoding pixels
        width, height = im.size
    _check_shape(mask, (height, width), ref)
    with atomic_path(out) as tmp:
        Image.fromarray(mask * np.uint8(255), mode="L").save(tmp, format="PNG")


def _write_sitk(mask: np.ndarray, ref: Path, out: Path) -> None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ref))
    try:
        ref_img = reader.Execute()
    except RuntimeError as exc:
        raise CXRInputError(f"{ref}: cannot read reference image ({_first_line(exc)})") from exc
    size = ref_img.GetSize()
    in_plane = tuple(s for s in reversed(size) if s > 1) if len(size) > 2 else tuple(reversed(size))
    _check_shape(mask, in_plane, ref)
    # Reinserting the singleton axes by reshape mirrors _squeeze_to_2d, so a (1, H, W) or
    # (H, 1, W) reference gets its mask back in the same index layout.
    img = sitk.GetImageFromArray(mask.reshape(tuple(reversed(size))), isVector=False)
    img.CopyInformation(ref_img)
    with atomic_path(out) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


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
