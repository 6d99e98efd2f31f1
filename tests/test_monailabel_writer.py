"""The MONAI Label app's result writer (monailabel_app/lib/writer.py): labels back in the input's geometry.

The writer imports no MONAI Label (it hands the writing to the engine), so it is tested here in the core environment.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_writer():
    spec = importlib.util.spec_from_file_location("adaqat_ml_writer", REPO / "monailabel_app" / "lib" / "writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _load_writer()


def _label(h: int = 30, w: int = 20) -> np.ndarray:
    label = np.zeros((h, w), dtype=np.uint8)
    label[3:10, 2:15] = 1  # asymmetric: a transpose would move it
    return label


def test_png_reference_to_nrrd_uint8(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.full((30, 20), 100, np.uint8)).save(ref)  # PIL size (20, 30): W=20, H=30
    out = writer.write_label(_label(), ref, ".nrrd", "uint8", out_dir=str(tmp_path))
    img = sitk.ReadImage(out)
    assert out.endswith(".nrrd") and img.GetPixelID() == sitk.sitkUInt8
    assert img.GetSize() == (20, 30)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), _label())


def test_png_reference_default_is_png_label_values(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(ref)
    out = writer.write_label(_label()[None], ref, out_dir=str(tmp_path))  # (1, H, W) tolerated
    assert out.endswith(".png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), _label())


@pytest.mark.parametrize("size", [(20, 30, 1), (20, 1, 30)])
def test_single_slice_volume_geometry_restored(tmp_path, size):
    """The one-slice NIfTI Slicer uploads: the singleton axis comes back where it was, with spacing,
    origin and direction of the input."""
    ref_img = sitk.Image(size, sitk.sitkInt16)
    ref_img.SetSpacing((0.5, 0.7, 2.0))
    ref_img.SetOrigin((1.0, -2.0, 3.5))
    ref_img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    ref = tmp_path / "slice.nii.gz"
    sitk.WriteImage(ref_img, str(ref))
    out = writer.write_label(_label(), ref, ".nrrd", "uint8", out_dir=str(tmp_path))
    img = sitk.ReadImage(out)
    assert img.GetSize() == size
    assert np.allclose(img.GetSpacing(), ref_img.GetSpacing())
    assert np.allclose(img.GetOrigin(), ref_img.GetOrigin())
    assert np.allclose(img.GetDirection(), ref_img.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).reshape(30, 20), _label())


def test_dicom_reference_geometry(tmp_path):
    """A DICOM radiograph: size and PixelSpacing as ITK reads them, label in the pixel grid."""
    from dicom_writer import make_dicom

    ref = make_dicom(tmp_path / "cxr.dcm", np.zeros((30, 20), np.uint16))
    out = writer.write_label(_label(), ref, ".nrrd", "uint8", out_dir=str(tmp_path))
    img = sitk.ReadImage(out)
    assert img.GetSize()[:2] == (20, 30)
    assert np.allclose(img.GetSpacing()[:2], (0.25, 0.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).reshape(30, 20), _label())


def test_nifti_reference_default_extension(tmp_path):
    ref = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image((20, 30, 1), sitk.sitkUInt8), str(ref))
    assert writer.write_label(_label(), ref, out_dir=str(tmp_path)).endswith(".nii.gz")


def test_size_mismatch_refused(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(ref)
    with pytest.raises(ValueError, match="does not match"):
        writer.write_label(_label(20, 30), ref, ".nrrd", out_dir=str(tmp_path))


@pytest.mark.parametrize("extension, dtype", [(".exe", "uint8"), (".nrrd", "float64")])
def test_unsupported_result_types_refused(tmp_path, extension, dtype):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(ref)
    with pytest.raises(writer.UnsupportedResult):
        writer.write_label(_label(), ref, extension, dtype, out_dir=str(tmp_path))
    assert not list(tmp_path.glob("adaqat_label_*"))  # nothing left behind


def test_failed_write_leaves_no_temporary_file(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(ref)
    with pytest.raises(ValueError, match="does not match"):
        writer.write_label(_label(20, 30), ref, ".png", out_dir=str(tmp_path))
    assert not list(tmp_path.glob("adaqat_label_*"))


def test_dicom_reference_dcm_result_is_a_dicom_seg(tmp_path):
    """``result_extension: ".dcm"`` for a DICOM input: a DICOM SEG referencing it, lung pixels as the label."""
    import pydicom
    from dicom_writer import make_dicom
    from pydicom.uid import SegmentationStorage

    ref = make_dicom(tmp_path / "cxr.dcm", np.zeros((30, 20), np.uint16))
    out = writer.write_label(_label(), ref, ".dcm", "uint8", out_dir=str(tmp_path))
    ds, src = pydicom.dcmread(out), pydicom.dcmread(ref)
    assert out.endswith(".dcm") and ds.SOPClassUID == SegmentationStorage
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.SegmentSequence[0].SegmentLabel == "lung"
    np.testing.assert_array_equal(ds.pixel_array, _label())


def test_dcm_result_for_a_non_dicom_input_refused(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(ref)
    with pytest.raises(writer.UnsupportedResult, match=r"DICOM SEG\) needs a DICOM input; .*cxr\.png is png"):
        writer.write_label(_label(), ref, ".dcm", out_dir=str(tmp_path))
    assert not list(tmp_path.glob("adaqat_label_*"))
