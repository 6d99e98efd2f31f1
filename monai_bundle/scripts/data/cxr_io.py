"""Reading and writing one chest X-ray (CXR) and its lung mask, whatever the file format.

Why: users bring PNG/JPEG exports, DICOM CR/DX from the scanner, or NIfTI/NRRD from research
pipelines. Every path into the model goes through :func:`read_cxr` (one 2-D float32 image in
[0, 1], rows = H, cols = W, in SimpleITK's array order); every mask goes back out through
:mod:`.mask_write`, in the reference image's own format and geometry. The supported suffixes are
listed here once. Bad input raises :class:`CXRInputError` naming the file, never a bare library traceback.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

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
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights PIL's "L" conversion uses
_PERCENTILES = (0.5, 99.5)
MAX_PIXELS = 200_000_000  # a 14k x 14k image; beyond that the float copies alone exceed several GB


class CXRInputError(ValueError):
    """An input file that cannot be used as a 2-D chest X-ray or mask; the message names the file."""


def suffix(path: str | os.PathLike) -> str:
    """Lower-case file suffix, ``.nii.gz`` kept whole."""
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
    if suffix(p) in _FORMAT_BY_SUFFIX:
        return True
    return p.suffix == "" and p.is_file() and _has_dicom_preamble(p)


def detect_format(path: str | os.PathLike) -> str:
    """Format name (png/jpeg/dicom/nifti/nrrd) from the suffix; raises CXRInputError if unknown."""
    p = Path(path)
    fmt = _FORMAT_BY_SUFFIX.get(suffix(p))
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
    suf = suffix(name)
    return name[: len(name) - len(suf)] if suf in _FORMAT_BY_SUFFIX else Path(name).stem


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def check_file(path: Path) -> None:
    """The file exists and is not empty; else CXRInputError naming it."""
    if not path.is_file():
        raise CXRInputError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CXRInputError(f"{path}: file is empty (0 bytes)")


def _reason(exc: BaseException) -> str:
    """One line saying what a library error was (a MemoryError has no message of its own)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines)[:300] if lines else type(exc).__name__


def _check_declared_size(path: Path, size: tuple[int, ...]) -> None:
    """Refuse, from the header alone (x, y[, z...] as declared), a volume or an image over ``MAX_PIXELS`` before any
    pixel buffer is allocated: a lying or hostile header (100,000 x 100,000 in a 20 kB file) must not make the
    reader try to allocate it."""
    spatial = [int(n) for n in size]
    if any(n < 0 for n in spatial):
        raise CXRInputError(f"{path}: header declares a negative image size {tuple(spatial)}")
    if len([n for n in spatial if n > 1]) > 2:
        slices = int(np.prod(spatial[2:], dtype=object))
        raise CXRInputError(f"{path}: 3-D volume with {slices} slices; a 2-D radiograph is expected")
    pixels = int(np.prod(spatial, dtype=object))
    if pixels > MAX_PIXELS:
        raise CXRInputError(f"{path}: header declares a {' x '.join(map(str, spatial))} px image ({pixels:,} pixels), "
                            f"over the limit of {MAX_PIXELS:,} pixels; not read")


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
    except Exception as exc:  # nibabel raises OSError, EOFError, zlib.error, HeaderDataError, MemoryError ...
        raise CXRInputError(f"{path}: damaged or truncated NIfTI file ({_reason(exc)})") from exc
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise CXRInputError(f"{path}: image contains NaN or infinite values")


def _read_sitk(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only: its size is checked before any pixel is read
        _check_declared_size(path, reader.GetSize())
        if fmt == "nifti":
            _check_nifti_data(path)
        img = reader.Execute()
    except RuntimeError as exc:
        if fmt == "png":  # e.g. grey+alpha PNGs, which ITK's PNG reader rejects
            return _read_pil(path)
        raise CXRInputError(f"{path}: cannot read {fmt} file ({first_line(exc)})") from exc
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
        with Image.open(path) as im:  # lazy: the header only
            _check_declared_size(path, im.size)
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except CXRInputError:
        raise
    except Image.DecompressionBombError as exc:  # raised by Image.open itself, from the header's size
        raise CXRInputError(f"{path}: image too large to read ({exc})") from exc
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise CXRInputError(f"{path}: cannot read image ({_reason(exc)})") from exc
    n_channels = arr.shape[2] if arr.ndim == 3 else 1
    return arr, {"squeezed_3d": False, "components": n_channels}


def _read_dicom(path: Path, rescale: bool) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom < 3, as pinned beside monailabel (.venv-monailabel)
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        # from memory, not the file: a lying element length (4 GB) makes a file object's read() allocate that
        # much up front, where a BytesIO returns what is there and pydicom reports the short value
        ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error, ...)
        raise CXRInputError(f"{path}: cannot read DICOM file ({_reason(exc)})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRInputError(f"{path}: DICOM file has no pixel data (not an image)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols, n_channels = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    except Exception as exc:  # a missing or non-numeric Rows/Columns/NumberOfFrames/SamplesPerPixel
        raise CXRInputError(f"{path}: invalid DICOM image header ({_reason(exc)})") from exc
    if frames > 1:
        raise CXRInputError(f"{path}: 3-D volume with {frames} slices; a 2-D radiograph is expected")
    _check_declared_size(path, (cols, rows))
    try:
        raw = ds.pixel_array
        arr = apply_modality_lut(raw, ds) if rescale and n_channels == 1 else raw
    except Exception as exc:  # truncated pixel data, missing decoder plugin, bad header, ...
        raise CXRInputError(f"{path}: cannot decode DICOM pixel data ({_reason(exc)})") from exc
    try:  # pydicom decodes each element when first used: a damaged one (an unknown VR) raises here
        header = {
            "squeezed_3d": False,
            "components": n_channels,
            "dtype": str(raw.dtype),
            "bit_depth": _dicom_bits(ds, raw.dtype),
            "photometric": str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
            "modality": str(ds.get("Modality", "")),
        }
    except Exception as exc:
        raise CXRInputError(f"{path}: invalid DICOM header ({_reason(exc)})") from exc
    return arr, header


def _dicom_bits(ds: Any, dtype: np.dtype) -> int | None:
    try:
        return int(ds.get("BitsStored", _bit_depth(dtype) or 0)) or None
    except (TypeError, ValueError):  # a non-numeric BitsStored that the decoder did not need
        return _bit_depth(dtype)


def first_line(exc: BaseException) -> str:
    """The line of a library error (ITK prints several) that says what went wrong."""
    lines = [ln for ln in str(exc).splitlines() if "ERROR" in ln] or str(exc).splitlines() or [""]
    return lines[-1].strip()


def _read_raw(path: str | os.PathLike, rescale: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixel array (H, W) or (H, W, C) as stored, plus header; shared by images and masks."""
    p = Path(path)
    check_file(p)
    fmt = detect_format(p)
    # Dispatch by hand rather than through MONAI's LoadImage readers: its ITKReader needs the `itk` package
    # (the engine reads with SimpleITK), and its PIL/Pydicom readers neither invert MONOCHROME1, refuse a
    # multi-frame or pixel-less DICOM, nor fail on a truncated JPEG/NIfTI with a message naming the file.
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
            _check_declared_size(path, im.size)
            im.load()
            return np.asarray(im)
    except CXRInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise CXRInputError(f"{path}: image too large to read ({exc})") from exc
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise CXRInputError(f"{path}: cannot read mask image ({_reason(exc)})") from exc
