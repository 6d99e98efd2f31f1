"""Fuzzed radiographs (tests/fuzz_inputs.py): mutated PNG, JPEG, DICOM and NIfTI files never crash, hang or blow up
the reader's memory; each is a usable image or a one-line CXRInputError naming the file.

A failure prints the format, seed and mutation of each failing case and the command that reproduces it.
The default suite reads 200 cases per format (about 10 s on 2 cores); ``-m fuzz`` selects the full 2,000 per format
(about 100 s), which CI runs too (it runs every test).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from fuzz_inputs import FORMATS, make_case, run_cases, summarize


def _assert_no_failure(results) -> None:
    failed = [r for r in results if r.failed]
    assert not failed, f"{len(failed)} of {len(results)} fuzzed inputs failed:\n" + "\n".join(r.line() for r in failed) + \
        "\n" + summarize(results)


def test_cases_are_deterministic_and_differ_by_seed():
    for fmt in FORMATS:
        a, b, c = make_case(fmt, 7), make_case(fmt, 7), make_case(fmt, 8)
        assert a.data == b.data and a.mutation == b.mutation and a.name == f"{fmt}_00007{a.suffix}"
        assert a.data != c.data


def test_fuzzed_inputs_default_200_per_format():
    results = run_cases([(fmt, seed) for fmt in FORMATS for seed in range(200)])
    _assert_no_failure(results)
    counts = Counter(r.outcome for r in results)
    assert counts["ok"] > 50 and counts["error"] > 400  # the mutations reach both outcomes


# The cases the first campaign found (before the reader's fixes): each is now a clear error, or an image where the
# lie was harmless once handled (dicom 4: the length runs past the end of the file, the pixels are all there).
FOUND = {
    ("png", 22): "IHDR 100000x100000: PIL's DecompressionBombError escaped",
    ("png", 0): "IHDR height 501503348: DecompressionBombError escaped from read_mask's palette check",
    ("jpeg", 16): "SOF 65535x65535: DecompressionBombError escaped",
    ("dicom", 4): "PixelData length 0xFFFFFFFE: the file object's read() allocated 4 GB",
    ("dicom", 58): "PixelData length 1: the elements after it parse as huge lengths",
    ("dicom", 39): "JPEG Lossless transfer syntax without a decoder: a multi-line error message",
    ("dicom", 1588): "unknown VR in Modality: NotImplementedError on first access",
    ("nifti", 17): "dim 32767 x 32767: nibabel read a 2 GB buffer before refusing",
    ("nifti", 55): "dim 32767 x 32767: over 10 s",
    ("nifti", 26): "dim 32767^3: MemoryError with no message, then IndexError in the error message",
}


def test_cases_found_by_the_first_campaign_are_clear_errors():
    results = run_cases(sorted(FOUND), workers=1)
    _assert_no_failure(results)
    for r in results:
        assert r.outcome == ("ok" if (r.case.fmt, r.case.seed) == ("dicom", 4) else "error"), \
            (r.case.describe(), FOUND[(r.case.fmt, r.case.seed)], r.detail)
    huge = [r for r in results if "huge" in r.case.mutation and r.case.fmt in ("png", "jpeg")]
    assert huge and all("too large" in r.detail or "over the limit of 200,000,000 pixels" in r.detail for r in huge)


def test_declared_sizes_over_the_limit_are_refused_from_the_header(tmp_path):
    """100,000 x 100,000 in the header of a 20 kB file: refused, naming the limit, before any pixel is decoded."""
    import io
    import struct

    import pydicom
    from fuzz_inputs import _png_ihdr, base_file
    from scripts.data.cxr_io import CXRInputError, read_cxr

    png = bytearray(base_file("png"))
    _png_ihdr(png, 100_000, 100_000)
    (tmp_path / "huge.png").write_bytes(bytes(png))
    nii = bytearray(base_file("nifti"))
    nii[40:48] = struct.pack("<4h", 2, 32_767, 32_767, 1)
    (tmp_path / "huge.nii").write_bytes(bytes(nii))
    ds = pydicom.dcmread(io.BytesIO(base_file("dicom_dx")))
    ds.Rows = ds.Columns = 65_535
    ds.save_as(tmp_path / "huge.dcm")
    for name in ("huge.png", "huge.nii", "huge.dcm"):
        with pytest.raises(CXRInputError, match=r"over the limit of 200,000,000 pixels; not read") as info:
            read_cxr(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


@pytest.mark.fuzz
def test_fuzzed_inputs_full_2000_per_format():
    results = run_cases([(fmt, seed) for fmt in FORMATS for seed in range(2000)])
    print(summarize(results))
    _assert_no_failure(results)


INFER_SEEDS = range(5)  # 5 per format: 20 files, some usable, most refused


@pytest.mark.e2e
def test_adaqat_infer_reports_each_fuzzed_file_once(shipped_models, tmp_path):
    from adaqat.cli import main

    folder = tmp_path / "fuzzed"
    folder.mkdir()
    cases = [make_case(fmt, seed) for fmt in FORMATS for seed in INFER_SEEDS]
    for case in cases:
        (folder / case.name).write_bytes(case.data)
    out = tmp_path / "out"
    rc = main(["infer", str(folder), "-o", str(out), "--model", str(shipped_models["int8"])])
    rows = list(csv.DictReader((out / "summary.csv").open()))
    by_name = Counter(Path(r["file"]).name for r in rows)
    assert sorted(by_name) == sorted(c.name for c in cases) and set(by_name.values()) == {1}, by_name
    for row in rows:
        name = Path(row["file"]).name
        case = next(c for c in cases if c.name == name)
        assert row["status"] in ("ok", "error"), case.describe()
        if row["status"] == "error":
            assert name in row["error"] and "\n" not in row["error"].strip(), (case.describe(), row["error"])
        else:
            assert (out / row["mask"]).is_file() if row.get("mask") else True, case.describe()
    statuses = Counter(r["status"] for r in rows)
    assert statuses["error"] > 0 and rc == 1
