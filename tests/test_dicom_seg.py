"""DICOM SEG output (monai_bundle/scripts/data/dicom_seg.py, mask_write's ``dicom_seg`` format, `adaqat infer
--output-format dicom_seg`): a binary Segmentation with one coded "lung" segment that references its source
radiograph, written for CR (MONOCHROME1) and DX (MONOCHROME2) sources with and without a Frame of Reference
and pixel spacing, and read back with highdicom and pydicom.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_writer import make_dicom
from PIL import Image
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SegmentationStorage,
    generate_uid,
)
from scripts.data.cxr_io import CXRInputError, read_mask
from scripts.data.dicom_seg import CATEGORY_CODE, TYPE_CODE, write_dicom_seg
from scripts.data.mask_write import default_mask_name, write_mask_like

SOURCE = "JPCLN003"
CROP = np.s_[:, 8:208]  # 224 x 200: not square, so a transposed mask cannot pass

# name: (modality, SOP class, photometric, attributes added, attributes removed, words of the one-line note or None)
CASES = {
    "dx_mono2_patient_geometry": (
        "DX", DigitalXRayImageStorageForPresentation, "MONOCHROME2",
        {"FrameOfReferenceUID": generate_uid(), "ImagePositionPatient": [-100.0, -80.0, 0.0],
         "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "PositionReferenceIndicator": ""},
        (), None),
    "dx_mono2_frame_of_reference_only": (
        "DX", DigitalXRayImageStorageForPresentation, "MONOCHROME2", {"FrameOfReferenceUID": generate_uid()}, (),
        "Frame of Reference UID copied without plane position"),
    "cr_mono1_pixel_spacing_no_frame_of_reference": (
        "CR", ComputedRadiographyImageStorage, "MONOCHROME1", {}, (), "no Frame of Reference"),
    "cr_mono1_imager_spacing_only": (
        "CR", ComputedRadiographyImageStorage, "MONOCHROME1", {"ImagerPixelSpacing": [0.175, 0.15]}, ("PixelSpacing",),
        "pixel spacing from ImagerPixelSpacing"),
    "cr_mono1_no_spacing": (
        "CR", ComputedRadiographyImageStorage, "MONOCHROME1", {}, ("PixelSpacing",), "no pixel measures"),
}


@pytest.fixture(scope="module")
def radiograph(jsrt_dir) -> tuple[np.ndarray, np.ndarray]:
    """A real JSRT radiograph (12-bit) and its lung mask, cropped to 224 x 200."""
    image = np.asarray(Image.open(jsrt_dir / "images" / f"{SOURCE}.png").convert("L"))[CROP].astype(np.uint16) * 16
    return image, read_mask(jsrt_dir / "masks" / f"{SOURCE}.png")[CROP]


def _source(path: Path, image: np.ndarray, modality: str, sop_class: str, photometric: str,
            add: dict, remove: tuple[str, ...]) -> Path:
    stored = (4095 - image).astype(np.uint16) if photometric == "MONOCHROME1" else image
    make_dicom(path, stored, photometric, modality=modality, **add)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    for kw in remove:
        delattr(ds, kw)
    ds.save_as(path, enforce_file_format=True)
    return path


def _seg_pixels(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array
    assert arr.shape == (ds.Rows, ds.Columns)  # one frame: one segment of one source frame
    return arr.astype(np.uint8)


@pytest.mark.parametrize("case", list(CASES))
def test_seg_of_cr_and_dx_sources(case, radiograph, tmp_path, caplog):
    modality, sop_class, photometric, add, remove, note_words = CASES[case]
    image, mask = radiograph
    ref = _source(tmp_path / f"{case}.dcm", image, modality, sop_class, photometric, add, remove)
    src = pydicom.dcmread(ref)
    assert default_mask_name(ref) == default_mask_name(ref, "dicom_seg") == f"{case}_seg.dcm"  # a DICOM's default
    assert default_mask_name(ref, "dicom") == f"{case}_mask.dcm"

    with caplog.at_level(logging.WARNING, logger="scripts.data.dicom_seg"):
        out, note = write_dicom_seg(mask, ref, tmp_path / default_mask_name(ref, "dicom_seg"))
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.data.dicom_seg"]
    if note_words is None:
        assert note is None and not lines
    else:  # one clear line, naming the file and saying what was done
        assert lines == [note] and "\n" not in note
        assert str(ref) in note and note_words in note, note
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ref.name, out.name])  # atomic: no temporary left

    ds = pydicom.dcmread(out)
    seg = hd.seg.segread(out)
    assert ds.SOPClassUID == SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert seg.get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    # one segment "lung", SNOMED CT coded
    assert seg.number_of_segments == 1
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "lung" and segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning) == CATEGORY_CODE
    assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == TYPE_CODE == ("39607008", "SCT", "Lung")
    from pydicom.sr.codedict import (
        codes,  # the current standard's CID 7150 / 7151 (pydicom 3)
    )

    assert CATEGORY_CODE[0] == codes.cid7150.AnatomicalStructure.value and TYPE_CODE[0] == codes.cid7151.Lung.value

    # geometry: spacing as the source's (PixelSpacing, else ImagerPixelSpacing), Frame of Reference as the source's
    measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    spacing = src.get("PixelSpacing") or src.get("ImagerPixelSpacing")
    if spacing is None:
        assert measures is None
    else:
        assert np.allclose([float(v) for v in measures[0].PixelSpacing], [float(v) for v in spacing])
    assert ds.get("FrameOfReferenceUID") == src.get("FrameOfReferenceUID")
    assert ("PlanePositionSequence" in ds.PerFrameFunctionalGroupsSequence[0]) == ("ImagePositionPatient" in src)

    # the pixels: the mask as written in the input's own image format (a DICOM image mask), read back
    own = write_mask_like(mask, ref, tmp_path / "own" / default_mask_name(ref, "dicom"), output_format="dicom")
    assert own.name == f"{case}_mask.dcm"
    np.testing.assert_array_equal(read_mask(out), read_mask(own))  # the project's own reader reads a SEG too
    np.testing.assert_array_equal(_seg_pixels(ds), read_mask(own))
    by_highdicom = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(by_highdicom[0, :, :, 0].astype(np.uint8), mask)


def test_write_mask_like_dicom_seg_and_an_empty_mask(radiograph, tmp_path):
    """Through mask_write: a wrong suffix is corrected to .dcm, and an empty mask (no lungs found) still gives a SEG."""
    image, mask = radiograph
    ref = _source(tmp_path / "dx.dcm", image, "DX", DigitalXRayImageStorageForPresentation, "MONOCHROME2", {}, ())
    out = write_mask_like(np.zeros_like(mask), ref, tmp_path / "dx_seg.png", output_format="dicom_seg")
    assert out.name == "dx_seg.dcm"
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SegmentationStorage and not _seg_pixels(ds).any()


def test_size_mismatch_names_the_file(radiograph, tmp_path):
    image, mask = radiograph
    ref = _source(tmp_path / "cr.dcm", image, "CR", ComputedRadiographyImageStorage, "MONOCHROME1", {}, ())
    with pytest.raises(CXRInputError, match=r"\(200, 224\) does not match reference .*cr\.dcm"):
        write_mask_like(mask.T, ref, tmp_path / "cr_seg.dcm", output_format="dicom_seg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cr.dcm"]


def test_non_dicom_reference_refused(jsrt_dir, tmp_path):
    ref = jsrt_dir / "images" / f"{SOURCE}.png"
    with pytest.raises(ValueError, match=f"{SOURCE}.png: a DICOM SEG needs a DICOM reference image, not png"):
        write_mask_like(read_mask(jsrt_dir / "masks" / f"{SOURCE}.png"), ref, tmp_path / "x_seg.dcm",
                        output_format="dicom_seg")


@pytest.mark.e2e
def test_adaqat_infer_output_format_dicom_seg(radiograph, jsrt_dir, tmp_path, capsys):
    """`adaqat infer --output-format dicom_seg` with the shipped model: a SEG beside nothing else; a PNG input
    asked for dicom_seg fails with one line naming the file."""
    from adaqat.cli import main

    image, mask = radiograph
    (tmp_path / "in").mkdir()
    ref = _source(tmp_path / "in" / "cxr.dcm", image, "CR", ComputedRadiographyImageStorage, "MONOCHROME1", {}, ())
    out_dir = tmp_path / "out"
    assert main(["infer", str(ref), "-o", str(out_dir), "--output-format", "dicom_seg"]) == 0
    seg_path = out_dir / "cxr_seg.dcm"
    assert seg_path.is_file() and not (out_dir / "cxr_mask.dcm").exists()
    ds, src = pydicom.dcmread(seg_path), pydicom.dcmread(ref)
    assert ds.SOPClassUID == SegmentationStorage
    assert hd.seg.segread(seg_path).get_source_image_uids() == [
        (src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    predicted = _seg_pixels(ds)
    dice = 2.0 * (predicted & mask).sum() / (predicted.sum() + mask.sum())
    assert dice > 0.8, dice

    capsys.readouterr()
    png = jsrt_dir / "images" / f"{SOURCE}.png"
    assert main(["infer", str(png), "-o", str(tmp_path / "out_png"), "--output-format", "dicom_seg"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(png.resolve()) in err[0] and "DICOM SEG needs a DICOM reference image" in err[0], err
