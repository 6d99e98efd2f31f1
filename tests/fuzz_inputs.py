"""Seeded fuzzing of the radiograph reader: mutated PNG, JPEG, DICOM and NIfTI files built from a real JSRT image.

A case is ``(format, seed)``; :func:`make_case` turns it into the same bytes and the same one-line description of
the mutation every time (``random.Random`` seeded with the string ``"<format>:<seed>"``). Mutations: random byte
flips, truncation, header fields that lie (PNG IHDR with its CRC fixed, JPEG SOF, DICOM attributes and transfer
syntax, NIfTI header fields) and huge declared dimensions.

:func:`run_cases` reads every case the way a run does (``read_cxr`` + the input screen's ``check_item``, then
``read_mask``) in child processes that each handle many cases (starting one costs about a second), with a
per-case timeout and an address-space limit; a child that dies or hangs is replaced and the case recorded.
Outcomes: ``ok`` (an image that passed the screen), ``error`` (a ``CXRInputError`` whose one-line message names
the file) and the failures ``crash`` (any other exception, a bad error message, a child killed by a signal),
``hang`` (over the timeout) and ``memory`` (``MemoryError``/``bad_alloc``, or the child's peak memory growing by
more than ``MEMORY_BUDGET`` on one case).

Reproduce one case: ``python tests/fuzz_inputs.py --repro png 17 -o /tmp/case`` writes the file and reads it here;
``python tests/fuzz_inputs.py --per-format 2000`` runs the full campaign and prints the outcome table.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SOURCE_IMAGE = REPO.parent / "shared" / "data" / "jsrt_scr_224" / "images" / "JPCLN001.png"
FORMATS = ("png", "jpeg", "dicom", "nifti")
CASE_TIMEOUT_S = 10.0
ADDRESS_SPACE_LIMIT = 4 * 1024**3  # RLIMIT_AS of each child
# Peak RSS growth allowed on one case. A header may honestly declare up to MAX_PIXELS, and reading costs about
# 13 bytes per declared pixel (float copies): a JPEG whose SOF claims 8192 x 8192 (jpeg seed 672) decodes, filled,
# at +873 MiB. Over this budget means a header that should have been refused was not.
MEMORY_BUDGET = 1536 * 1024**2
FAILURES = ("crash", "hang", "memory")
HUGE_SIDES = ((100_000, 100_000), (65_535, 65_535), (20_000, 20_000), (2**31 - 1, 2**31 - 1), (1, 400_000_000),
              (30_000, 10_000))

# --------------------------------------------------------------------------------------------
# the real files the mutations start from
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _gray() -> np.ndarray:
    from PIL import Image

    with Image.open(SOURCE_IMAGE) as im:
        return np.asarray(im.convert("L"))


@lru_cache(maxsize=None)
def base_file(kind: str) -> bytes:
    """The unmutated file: png, jpeg, dicom_cr (CR MONOCHROME1), dicom_dx (DX MONOCHROME2), nifti (.nii bytes)."""
    from PIL import Image

    gray = _gray()
    if kind in ("png", "jpeg"):
        buf = io.BytesIO()
        Image.fromarray(gray).save(buf, format="PNG" if kind == "png" else "JPEG", quality=90)
        return buf.getvalue()
    if kind.startswith("dicom"):
        sys.path.insert(0, str(TESTS))
        from dicom_writer import make_dicom

        stored = gray.astype(np.uint16) * 16
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "dicom_cr":
                path = make_dicom(Path(tmp) / "x.dcm", (4095 - stored).astype(np.uint16), "MONOCHROME1", modality="CR")
            else:
                path = make_dicom(Path(tmp) / "x.dcm", stored, "MONOCHROME2", modality="DX")
            return path.read_bytes()
    if kind == "nifti":
        import nibabel as nib

        img = nib.Nifti1Image(gray.T.astype(np.int16), np.diag([0.5, 0.5, 1.0, 1.0]))
        return img.to_bytes()
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# generic mutations
# --------------------------------------------------------------------------------------------


def _flip(rng: random.Random, data: bytes, start: int = 0, end: int | None = None) -> tuple[bytes, str]:
    buf = bytearray(data)
    end = len(buf) if end is None else end
    n = rng.randint(1, 50)
    for _ in range(n):
        buf[rng.randrange(start, end)] = rng.randrange(256)
    return bytes(buf), f"flip {n} bytes in [{start},{end})"


def _truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(1, len(data))
    return data[:at], f"truncate at {at} of {len(data)}"


def _pick(rng: random.Random, values):
    return values[rng.randrange(len(values))]


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset of the length field, type) of each chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        out.append((pos, data[pos + 4 : pos + 8]))
        pos += 12 + length
    return out


def _png_fix_crc(buf: bytearray, pos: int) -> None:
    length = struct.unpack(">I", buf[pos : pos + 4])[0]
    crc = zlib.crc32(bytes(buf[pos + 4 : pos + 8 + length])) & 0xFFFFFFFF
    buf[pos + 8 + length : pos + 12 + length] = struct.pack(">I", crc)


def _png_ihdr(buf: bytearray, width=None, height=None, depth=None, colour=None, interlace=None) -> None:
    if width is not None:
        buf[16:20] = struct.pack(">I", width)
    if height is not None:
        buf[20:24] = struct.pack(">I", height)
    for value, at in ((depth, 24), (colour, 25), (interlace, 28)):
        if value is not None:
            buf[at] = value
    _png_fix_crc(buf, 8)


def _mutate_png(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = _pick(rng, ("flip", "truncate", "ihdr_lie", "ihdr_lie", "huge", "idat_flip_crc"))
    if kind == "flip":
        return _flip(rng, data)
    if kind == "truncate":
        return _truncate(rng, data)
    buf = bytearray(data)
    if kind == "huge":
        w, h = _pick(rng, HUGE_SIDES)
        _png_ihdr(buf, w, h)
        return bytes(buf), f"huge IHDR {w}x{h} (CRC fixed)"
    if kind == "ihdr_lie":
        fields: dict[str, int] = {}
        for name in rng.sample(["width", "height", "depth", "colour", "interlace"], rng.randint(1, 3)):
            if name in ("width", "height"):
                fields[name] = _pick(rng, (0, 1, 31, 32, 112, 223, 225, 448, 4096, 10_000, rng.randrange(2**32)))
            elif name == "depth":
                fields[name] = _pick(rng, (0, 1, 2, 3, 4, 8, 16, 32, 255))
            elif name == "colour":
                fields[name] = _pick(rng, (0, 1, 2, 3, 4, 5, 6, 7, 255))
            else:
                fields[name] = _pick(rng, (0, 1, 2, 255))
        _png_ihdr(buf, **fields)
        return bytes(buf), "IHDR lie " + ",".join(f"{k}={v}" for k, v in fields.items()) + " (CRC fixed)"
    # idat_flip_crc: damage the compressed pixel data but keep every CRC valid
    idats = [pos for pos, typ in _png_chunks(data) if typ == b"IDAT"]
    pos = _pick(rng, idats)
    length = struct.unpack(">I", data[pos : pos + 4])[0]
    out, what = _flip(rng, data, pos + 8, pos + 8 + length)
    buf = bytearray(out)
    _png_fix_crc(buf, pos)
    return bytes(buf), f"IDAT {what} (CRC fixed)"


# --------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------


def _jpeg_sof(data: bytes) -> int:
    """Offset of the SOF0..SOF15 marker (not DHT C4, JPG C8, DAC CC)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("no SOF found")
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise ValueError("no SOF found")


def _mutate_jpeg(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = _pick(rng, ("flip", "truncate", "sof_lie", "sof_lie", "huge", "header_flip"))
    sof = _jpeg_sof(data)
    if kind == "flip":
        return _flip(rng, data)
    if kind == "truncate":
        return _truncate(rng, data)
    if kind == "header_flip":  # the tables and the frame header (DQT, DHT, SOF, SOS)
        scan = data.find(b"\xff\xda")
        return _flip(rng, data, 2, scan + 14)
    buf = bytearray(data)
    if kind == "huge":
        h, w = _pick(rng, ((65_535, 65_535), (65_000, 20_000), (20_000, 20_000), (65_535, 1)))
        buf[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
        return bytes(buf), f"huge SOF {w}x{h}"
    fields: dict[str, int] = {}
    for name in rng.sample(["height", "width", "precision", "components"], rng.randint(1, 2)):
        if name in ("height", "width"):
            fields[name] = _pick(rng, (0, 1, 31, 112, 223, 225, 448, 8192, rng.randrange(65_536)))
        elif name == "precision":
            fields[name] = _pick(rng, (0, 1, 8, 12, 16, 255))
        else:
            fields[name] = _pick(rng, (0, 2, 3, 4, 255))
    if "precision" in fields:
        buf[sof + 4] = fields["precision"]
    if "height" in fields:
        buf[sof + 5 : sof + 7] = struct.pack(">H", fields["height"])
    if "width" in fields:
        buf[sof + 7 : sof + 9] = struct.pack(">H", fields["width"])
    if "components" in fields:
        buf[sof + 9] = fields["components"]
    return bytes(buf), "SOF lie " + ",".join(f"{k}={v}" for k, v in fields.items())


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------

_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS
    "1.2.840.10008.1.2.4.90",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.201",  # HTJ2K
    "1.2.3.4.5",  # unknown
    "not-a-uid",
)
_DICOM_LIES = {
    "Rows": lambda rng: _pick(rng, (0, 1, 31, 112, 223, 225, 448, 4096, 65_535)),
    "Columns": lambda rng: _pick(rng, (0, 1, 31, 112, 223, 225, 448, 4096, 65_535)),
    "BitsAllocated": lambda rng: _pick(rng, (0, 1, 7, 8, 12, 16, 24, 32, 64, 65_535)),
    "BitsStored": lambda rng: _pick(rng, (0, 1, 8, 12, 16, 17, 32, 64, 65_535)),
    "HighBit": lambda rng: _pick(rng, (0, 7, 11, 15, 16, 63, 65_535)),
    "PixelRepresentation": lambda rng: _pick(rng, (0, 1, 2, 65_535)),
    "PhotometricInterpretation": lambda rng: _pick(rng, ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                                                        "PALETTE COLOR", "ARGB", "", "GARBAGE")),
    "SamplesPerPixel": lambda rng: _pick(rng, (0, 2, 3, 4, 255, 65_535)),
    "PlanarConfiguration": lambda rng: _pick(rng, (0, 1, 7)),
    "NumberOfFrames": lambda rng: _pick(rng, ("0", "1", "2", "-1", "1000000", "x", "1.5", "")),
    "PixelSpacing": lambda rng: _pick(rng, (["0", "0"], ["-1", "0.5"], ["nan", "inf"], ["abc", "1"], ["1"], ["1e308", "1e-308"], [])),
    "RescaleSlope": lambda rng: _pick(rng, ("0", "-1", "nan", "inf", "1e308", "abc", "")),
    "RescaleIntercept": lambda rng: _pick(rng, ("-1024", "nan", "1e308", "abc")),
    "TransferSyntaxUID": lambda rng: _pick(rng, _TRANSFER_SYNTAXES),
}


def _dicom_bytes(ds, transfer_syntax: str | None) -> bytes:
    """Preamble + file meta (whatever transfer syntax it claims) + the data set always encoded explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = ds.file_meta
    if transfer_syntax is not None:
        meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return fp.getvalue() + body.getvalue()


def _set_raw(ds, keyword: str, value) -> None:
    """Put ``value`` (text or a list of texts, backslash-joined) into the element as stored bytes, valid or not."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    text = "\\".join(value) if isinstance(value, list) else value
    raw = text.encode("ascii")
    raw += b" " * (len(raw) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


def _mutate_dicom(rng: random.Random, variant: str, data: bytes) -> tuple[bytes, str]:
    kind = _pick(rng, ("flip", "truncate", "lie", "lie", "lie", "huge", "pixel_length_lie"))
    if kind == "flip":
        return _flip(rng, data)
    if kind == "truncate":
        return _truncate(rng, data)
    if kind == "pixel_length_lie":  # the Pixel Data element's 4-byte length: OW, 2 reserved bytes, length
        at = data.rfind(b"\xe0\x7f\x10\x00")
        length = _pick(rng, (0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(2**32)))
        return data[: at + 8] + struct.pack("<I", length) + data[at + 12 :], f"PixelData length lie {length}"
    import pydicom
    from pydicom import config

    ds = pydicom.dcmread(io.BytesIO(data))
    saved = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
    try:
        if kind == "huge":
            rows, cols = _pick(rng, ((65_535, 65_535), (65_535, 40_000), (30_000, 30_000)))
            ds.Rows, ds.Columns = rows, cols
            what = f"huge Rows/Columns {rows}x{cols}"
            if rng.random() < 0.5:
                _set_raw(ds, "NumberOfFrames", "100000")
                what += ", NumberOfFrames 100000"
            return _dicom_bytes(ds, None), what
        lies: dict[str, object] = {}
        for name in rng.sample(sorted(_DICOM_LIES), rng.randint(1, 3)):
            lies[name] = _DICOM_LIES[name](rng)
        for name, value in lies.items():
            if name == "TransferSyntaxUID":
                continue
            if isinstance(value, (str, list)):  # DS/IS/CS text written as raw bytes: pydicom refuses invalid numbers
                _set_raw(ds, name, value)
            else:
                setattr(ds, name, value)
        return _dicom_bytes(ds, lies.get("TransferSyntaxUID")), "lie " + ",".join(f"{k}={v!r}" for k, v in lies.items())
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = saved


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------

_NIFTI_DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 255, 9999, -1)


def _nifti_lie(rng: random.Random, buf: bytearray) -> str:
    name = _pick(rng, ("dim0", "dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl", "sizeof_hdr", "magic", "xform"))
    if name == "dim0":
        value = _pick(rng, (-1, 0, 1, 3, 4, 7, 8, 9, 100))
        buf[40:42] = struct.pack("<h", value)
    elif name == "dim":
        i = rng.randint(1, 7)
        value = _pick(rng, (-1, 0, 1, 2, 40, 223, 225, 4096, 32_767, -32_768))
        buf[40 + 2 * i : 42 + 2 * i] = struct.pack("<h", value)
        name = f"dim[{i}]"
    elif name == "datatype":
        value = _pick(rng, _NIFTI_DATATYPES)
        buf[70:72] = struct.pack("<h", value)
    elif name == "bitpix":
        value = _pick(rng, (0, 1, 8, 16, 32, 64, 128, -8))
        buf[72:74] = struct.pack("<h", value)
    elif name == "pixdim":
        i = rng.randint(0, 7)
        value = _pick(rng, (0.0, -1.0, float("nan"), float("inf"), 1e38, 1e-38))
        buf[76 + 4 * i : 80 + 4 * i] = struct.pack("<f", value)
        name = f"pixdim[{i}]"
    elif name == "vox_offset":
        value = _pick(rng, (0.0, 100.0, 347.0, 348.0, 353.0, -352.0, 1e10, float("nan"), 352.5, 100_000.0))
        buf[108:112] = struct.pack("<f", value)
    elif name == "scl":
        at = _pick(rng, (112, 116))
        value = _pick(rng, (0.0, float("nan"), float("inf"), -1e38, 1e38))
        buf[at : at + 4] = struct.pack("<f", value)
        name = "scl_slope" if at == 112 else "scl_inter"
    elif name == "sizeof_hdr":
        value = _pick(rng, (0, 540, 347, 349, -348, 0x5C010000))
        buf[0:4] = struct.pack("<i", value)
    elif name == "magic":
        value = _pick(rng, (b"ni1\x00", b"n+2\x00", b"\x00\x00\x00\x00", b"xxxx"))
        buf[344:348] = value
    else:
        at = _pick(rng, (252, 254))
        value = _pick(rng, (-1, 0, 1, 2, 5, 100))
        buf[at : at + 2] = struct.pack("<h", value)
        name = "qform_code" if at == 252 else "sform_code"
    return f"{name}={value!r}"


def _mutate_nifti(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = _pick(rng, ("flip", "flip_header", "truncate", "lie", "lie", "lie", "huge"))
    if kind == "flip":
        return _flip(rng, data)
    if kind == "flip_header":
        return _flip(rng, data, 0, 352)
    if kind == "truncate":
        return _truncate(rng, data)
    buf = bytearray(data)
    if kind == "huge":
        dims = _pick(rng, ((2, 32_767, 32_767, 1), (3, 32_767, 32_767, 32_767), (2, 32_767, 10_000, 1), (4, 30_000, 30_000, 1)))
        buf[40:48] = struct.pack("<4h", *dims)
        if dims[0] == 4:
            buf[48:50] = struct.pack("<h", 30_000)
        return bytes(buf), f"huge dim {dims}"
    lies = [_nifti_lie(rng, buf) for _ in range(rng.randint(1, 3))]
    return bytes(buf), "lie " + ",".join(lies)


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    fmt: str
    seed: int
    data: bytes
    suffix: str
    mutation: str

    @property
    def name(self) -> str:
        return f"{self.fmt}_{self.seed:05d}{self.suffix}"

    def describe(self) -> str:
        return f"format={self.fmt} seed={self.seed} file={self.name} mutation: {self.mutation}"


def make_case(fmt: str, seed: int) -> Case:
    """The mutated file of ``(fmt, seed)``; the same bytes and description every time."""
    rng = random.Random(f"{fmt}:{seed}")
    if fmt == "png":
        data, what = _mutate_png(rng, base_file("png"))
        return Case(fmt, seed, data, ".png", what)
    if fmt == "jpeg":
        data, what = _mutate_jpeg(rng, base_file("jpeg"))
        return Case(fmt, seed, data, ".jpg", what)
    if fmt == "dicom":
        variant = _pick(rng, ("dicom_cr", "dicom_dx"))
        data, what = _mutate_dicom(rng, variant, base_file(variant))
        return Case(fmt, seed, data, ".dcm", f"{variant}: {what}")
    if fmt == "nifti":
        gz = rng.random() < 0.3
        raw = base_file("nifti")
        if gz and rng.random() < 0.4:  # damage the compressed stream itself
            data, what = _flip(rng, gzip.compress(raw, mtime=0))
            return Case(fmt, seed, data, ".nii.gz", f"gzip stream {what}")
        data, what = _mutate_nifti(rng, raw)
        if gz:
            return Case(fmt, seed, gzip.compress(data, mtime=0), ".nii.gz", f"{what} (then gzipped)")
        return Case(fmt, seed, data, ".nii", what)
    raise ValueError(f"unknown format {fmt!r}")


# --------------------------------------------------------------------------------------------
# the child process: many cases, one JSON line each
# --------------------------------------------------------------------------------------------

MARK = "@@fuzz@@ "


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def read_one(path: str) -> dict:
    """Read and screen one file as a run does; the outcome (ok/error/crash/memory) and a detail line."""
    from scripts.data.cxr_io import CXRInputError, read_mask
    from scripts.data.input_screen import check_item

    try:
        check_item({"image": path}, mask_key=None)
        outcome = {"outcome": "ok", "detail": ""}
    except CXRInputError as exc:
        outcome = _classify_error(exc, path)
    except BaseException as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
        outcome = _classify_other(exc)
    try:  # the mask reader (no rescale, palette indices) on the same bytes
        read_mask(path)
    except CXRInputError as exc:
        mask = _classify_error(exc, path)
        if mask["outcome"] != "error" and outcome["outcome"] in ("ok", "error"):
            outcome = {"outcome": mask["outcome"], "detail": "read_mask: " + mask["detail"]}
    except BaseException as exc:  # noqa: BLE001
        if outcome["outcome"] in ("ok", "error"):
            other = _classify_other(exc)
            outcome = {"outcome": other["outcome"], "detail": "read_mask: " + other["detail"]}
    return outcome


def _is_memory(exc: BaseException) -> bool:
    return any(isinstance(e, MemoryError) or "bad_alloc" in str(e) or "Unable to allocate" in str(e) for e in _chain(exc))


def _classify_error(exc: BaseException, path: str) -> dict:
    message = str(exc)
    if _is_memory(exc):
        return {"outcome": "memory", "detail": f"CXRInputError from a failed allocation: {message[:300]}"}
    if path not in message:
        return {"outcome": "crash", "detail": f"error message does not name the file: {message[:300]}"}
    if "\n" in message.strip():
        return {"outcome": "crash", "detail": f"error message is not one line: {message[:300]!r}"}
    return {"outcome": "error", "detail": message[:300]}


def _classify_other(exc: BaseException) -> dict:
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    kind = "memory" if _is_memory(exc) else "crash"
    return {"outcome": kind, "detail": f"{type(exc).__name__}{at}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def _child_main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(REPO / "monai_bundle"))
    import scripts.data.input_screen  # noqa: F401 - imported before the first case, not timed with it

    out = sys.stdout
    sys.stdout = sys.stderr  # library prints stay out of the result stream
    out.write(MARK + json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        path = line.strip()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = read_one(path)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        result["peak_growth"] = grown
        if grown > MEMORY_BUDGET and result["outcome"] in ("ok", "error"):
            result = {"outcome": "memory", "detail": f"peak memory grew by {grown / 2**20:.0f} MiB ({result['detail']})",
                      "peak_growth": grown}
        out.write(MARK + json.dumps(result) + "\n")
        out.flush()


# --------------------------------------------------------------------------------------------
# the parent: children with a timeout and a memory limit, replaced after a crash or hang
# --------------------------------------------------------------------------------------------


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Child:
    def __init__(self, log: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", PYTHONHASHSEED="0")
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
                                      "import fuzz_inputs; fuzz_inputs._child_main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     preexec_fn=_limit_child, cwd=str(REPO))
        self._buf = b""
        if self._next(60.0) is None:
            raise RuntimeError(f"fuzz child did not start (see {log})")

    def _next(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(MARK):
                    return json.loads(text[len(MARK) :])
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return {"eof": True}
                self._buf += chunk

    def run(self, path: str, timeout: float) -> dict:
        try:
            self.proc.stdin.write(path.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        started = time.monotonic()
        result = self._next(timeout)
        seconds = time.monotonic() - started
        if result is None:
            self.kill()
            return {"outcome": "hang", "detail": f"no result after {timeout:.0f} s", "seconds": seconds, "dead": True}
        if result.get("eof"):
            rc = self.proc.wait()
            what = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            kind = "memory" if rc < 0 and -rc == signal.SIGKILL else "crash"
            return {"outcome": kind, "detail": f"reader process {what}", "seconds": seconds, "dead": True}
        result["seconds"] = seconds
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    seconds: float

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES

    def line(self) -> str:
        return f"{self.outcome}: {self.case.describe()} -> {self.detail}  [repro: python tests/fuzz_inputs.py --repro {self.case.fmt} {self.case.seed}]"


def run_cases(cases: list[tuple[str, int]], workers: int = 2, timeout: float = CASE_TIMEOUT_S,
              folder: Path | None = None) -> list[Result]:
    """Every case through the reader in ``workers`` child processes; results in the order of ``cases``."""
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="fuzz_inputs_")) if own else folder
    folder.mkdir(parents=True, exist_ok=True)
    results: list[Result | None] = [None] * len(cases)
    lock, nxt = threading.Lock(), [0]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        child = None
        try:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(cases):
                    return
                case = make_case(*cases[i])
                path = folder / case.name
                path.write_bytes(case.data)
                if child is None:
                    child = _Child(folder / f"child_{index}.log")
                got = child.run(str(path), timeout)
                results[i] = Result(case, got["outcome"], got["detail"], got["seconds"])
                # a dead child, or one whose peak memory grew (the high-water mark cannot go down), is replaced
                if got.get("dead") or got["outcome"] == "memory" or got.get("peak_growth", 0) > MEMORY_BUDGET // 4:
                    child.kill()
                    child = None
                path.unlink()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        finally:
            if child is not None:
                child.proc.stdin.close()
                child.kill()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def summarize(results: list[Result]) -> str:
    lines = [f"{'format':8} {'cases':>6} {'ok':>6} {'error':>6} {'crash':>6} {'hang':>6} {'memory':>6} {'max s':>7}"]
    for fmt in FORMATS:
        mine = [r for r in results if r.case.fmt == fmt]
        if not mine:
            continue
        c = Counter(r.outcome for r in mine)
        lines.append(f"{fmt:8} {len(mine):6d} {c['ok']:6d} {c['error']:6d} {c['crash']:6d} {c['hang']:6d} {c['memory']:6d} "
                     f"{max(r.seconds for r in mine):7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-format", type=int, default=200)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repro", nargs=2, metavar=("FORMAT", "SEED"), help="write one case and read it in this process")
    p.add_argument("-o", "--out", help="with --repro: folder for the file")
    args = p.parse_args(argv)
    if args.repro:
        case = make_case(args.repro[0], int(args.repro[1]))
        folder = Path(args.out or tempfile.mkdtemp(prefix="fuzz_case_"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / case.name
        path.write_bytes(case.data)
        print(case.describe())
        print(f"written {path}")
        sys.path.insert(0, str(REPO / "monai_bundle"))
        from scripts.data.input_screen import check_item

        check_item({"image": str(path)}, mask_key=None)  # raises what the fuzzer saw, with its traceback
        print("ok: read and passed the input screen")
        return 0
    cases = [(fmt, s) for fmt in args.formats for s in range(args.first_seed, args.first_seed + args.per_format)]
    started = time.monotonic()
    results = run_cases(cases, workers=args.workers)
    print(summarize(results))
    print(f"{len(results)} cases in {time.monotonic() - started:.0f} s with {args.workers} workers")
    failed = [r for r in results if r.failed]
    for r in failed:
        print(r.line())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
