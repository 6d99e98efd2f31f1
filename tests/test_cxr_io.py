"""cxr_io: every format reads in display orientation and masks go back in the reference's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_writer import make_dicom
from PIL import Image
from scripts.data.cxr_io import CXRInputError, is_supported, read_cxr, read_mask
from scripts.data.mask_write import default_mask_name, write_mask_like

H, W = 53, 37  # not square, so a transpose would show
CORNER = (slice(0, 8), slice(0, 5))  # bright block in the top-left corner (rows 0..7, cols 0..4)


def asymmetric(dtype=np.uint8, peak: int = 255) -> np.ndarray:
    """Dim horizontal gradient with a bright top-left corner: any flip or transpose moves the corner."""
    arr = np.tile(np.linspace(0, peak * 0.4, W), (H, 1))
    arr[CORNER] = peak
    return arr.astype(dtype)


def corner_mask(img: np.ndarray) -> np.ndarray:
    return (img > 0.9).astype(np.uint8)


def assert_corner(mask: np.ndarray) -> None:
    expected = np.zeros((H, W), np.uint8)
    expected[CORNER] = 1
    np.testing.assert_array_equal((np.asarray(mask) != 0).astype(np.uint8), expected)


# ------------------------------------------------------------------ PNG / JPEG


def test_png_round_trip(tmp_path):
    ref = tmp_path / "cxr.png"
    Image.fromarray(asymmetric()).save(ref)
    img, header = read_cxr(ref)
    assert img.dtype == np.float32 and img.shape == (H, W)
    assert header["format"] == "png" and header["shape"] == (H, W) and header["bit_depth"] == 8
    assert header["squeezed_3d"] is False
    assert img.min() == 0.0 and img.max() == 1.0
    assert_corner(corner_mask(img))
    assert default_mask_name(ref) == "cxr_mask.png"
    out = write_mask_like(corner_mask(img), ref, tmp_path / default_mask_name(ref))
    written = np.asarray(Image.open(out))
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    assert_corner(written)
    assert_corner(read_mask(out, expected_shape=(H, W)))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_jpeg_reference_gets_png_mask(tmp_path):
    ref = tmp_path / "cxr.jpeg"
    Image.fromarray(asymmetric()).save(ref, quality=95)
    img, header = read_cxr(ref)
    assert header["format"] == "jpeg" and img.shape == (H, W)
    assert default_mask_name(ref) == "cxr_mask.png"
    out = write_mask_like(corner_mask(img), ref, tmp_path / "cxr_mask.jpg")  # suffix fixed to lossless PNG
    assert out.name == "cxr_mask.png" and out.exists()
    assert_corner(np.asarray(Image.open(out)))


def test_16bit_png(tmp_path):
    ref = tmp_path / "cxr16.png"
    sitk.WriteImage(sitk.GetImageFromArray(asymmetric(np.uint16, 65535)), str(ref))
    img, header = read_cxr(ref)
    assert header["bit_depth"] == 16 and header["dtype"] == "uint16"
    assert img.max() == 1.0
    assert_corner(corner_mask(img))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_pngs_read_as_luminance(tmp_path, mode):
    grey = asymmetric()
    rgb = np.stack([grey, grey, grey], axis=-1)
    if mode == "RGBA":
        alpha = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)  # must be ignored
        pil = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "LA":
        pil = Image.fromarray(np.dstack([grey, np.full_like(grey, 7)]), "LA")
    else:
        pil = Image.fromarray(rgb, "RGB").convert(mode, palette=Image.Palette.ADAPTIVE)
    ref = tmp_path / f"cxr_{mode}.png"
    pil.save(ref)
    img, _ = read_cxr(ref)
    expected, _ = read_cxr(_save(tmp_path / "grey.png", grey))
    np.testing.assert_allclose(img, expected, atol=0.02)


def _save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_palette_mask_uses_indices(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[CORNER] = 1
    pil = Image.fromarray(labels, "P")
    pil.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 drawn white: colours would mislead
    pil.save(tmp_path / "m.png")
    assert_corner(read_mask(tmp_path / "m.png"))


def test_constant_image_is_zeros(tmp_path):
    img, _ = read_cxr(_save(tmp_path / "flat.png", np.full((H, W), 77, np.uint8)))
    assert img.shape == (H, W) and not img.any()


# ------------------------------------------------------------------ NIfTI / NRRD


def _geometry(path: Path):
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return r.GetSize(), r.GetSpacing(), r.GetOrigin(), r.GetDirection()


def _assert_same_geometry(a: Path, b: Path) -> None:
    ga, gb = _geometry(a), _geometry(b)
    assert ga[0] == gb[0]
    for x, y in zip(ga[1:], gb[1:]):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr"])
def test_volume_formats_round_trip_2d(tmp_path, suffix):
    image = sitk.GetImageFromArray(asymmetric(np.int16, 3000))
    image.SetSpacing((0.7, 1.3))
    image.SetOrigin((-10.0, 25.0))
    image.SetDirection((-1.0, 0.0, 0.0, 1.0))  # flipped x: must not be "undone" on read
    ref = tmp_path / f"cxr{suffix}"
    sitk.WriteImage(image, str(ref))
    img, header = read_cxr(ref)
    assert header["format"] == ("nifti" if ".nii" in suffix else "nrrd") and not header["squeezed_3d"]
    assert_corner(corner_mask(img))
    out = write_mask_like(corner_mask(img), ref, tmp_path / default_mask_name(ref))
    assert out.name == "cxr_mask" + (".nrrd" if suffix == ".nhdr" else suffix)
    _assert_same_geometry(ref, out)
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert_corner(sitk.GetArrayFromImage(written))


@pytest.mark.parametrize("layout", ["z", "y"])
def test_single_slice_volume_is_squeezed_and_written_back_3d(tmp_path, layout):
    arr = asymmetric(np.float32, 1.0)[None] if layout == "z" else asymmetric(np.float32, 1.0)[:, None, :]
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.5, 0.6, 2.5))
    image.SetOrigin((1.0, -2.0, 30.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection(tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel()))
    ref = tmp_path / "slice.nii.gz"
    sitk.WriteImage(image, str(ref))
    img, header = read_cxr(ref)
    assert header["squeezed_3d"] is True and img.shape == (H, W)
    assert_corner(corner_mask(img))
    out = write_mask_like(corner_mask(img), ref, tmp_path / default_mask_name(ref))
    _assert_same_geometry(ref, out)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert written.shape == arr.shape
    assert_corner(written.reshape(H, W))
    assert_corner(read_mask(out, expected_shape=(H, W)))


def test_multi_slice_volume_is_refused(tmp_path):
    ref = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, H, W), np.int16)), str(ref))
    with pytest.raises(CXRInputError, match=r"ct\.nii\.gz.*3-D volume with 4 slices"):
        read_cxr(ref)


def test_nan_is_refused(tmp_path):
    arr = asymmetric(np.float32, 1.0)
    arr[3, 3] = np.nan
    ref = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(ref))
    with pytest.raises(CXRInputError, match="nan.nrrd.*NaN"):
        read_cxr(ref)


# ------------------------------------------------------------------ DICOM


def test_dicom_round_trip(tmp_path):
    stored = asymmetric(np.uint16, 4000)
    ref = make_dicom(tmp_path / "cxr.dcm", stored, modality="DX", RescaleSlope=2, RescaleIntercept=-1000)
    img, header = read_cxr(ref)
    assert header["format"] == "dicom" and header["bit_depth"] == 16 and not header["inverted"]
    assert_corner(corner_mask(img))
    assert default_mask_name(ref) == "cxr_seg.dcm"  # a DICOM's own mask format is a DICOM SEG (test_dicom_seg.py)
    out = write_mask_like(corner_mask(img), ref, tmp_path / default_mask_name(ref, "dicom"), output_format="dicom")
    assert out.name == "cxr_mask.dcm"
    src, ds = pydicom.dcmread(ref), pydicom.dcmread(out)
    assert (ds.Rows, ds.Columns) == (H, W) and ds.BitsAllocated == 16
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SeriesDescription == "AdaQAT lung mask"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PixelSpacing == src.PixelSpacing
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "RescaleSlope" not in ds
    assert_corner(ds.pixel_array)
    assert_corner(read_mask(out, expected_shape=(H, W)))


def test_dicom_8bit_cr(tmp_path):
    ref = make_dicom(tmp_path / "cr.dcm", asymmetric(), modality="CR")
    img, _ = read_cxr(ref)
    out = write_mask_like(corner_mask(img), ref, tmp_path / "cr_mask.dcm", output_format="dicom")
    ds = pydicom.dcmread(out)
    assert ds.BitsAllocated == 8 and ds.pixel_array.dtype == np.uint8
    assert_corner(ds.pixel_array)


def test_monochrome1_is_inverted(tmp_path):
    stored = asymmetric(np.uint16, 4000)
    mono2, _ = read_cxr(make_dicom(tmp_path / "m2.dcm", stored))
    mono1, header = read_cxr(make_dicom(tmp_path / "m1.dcm", (4000 - stored).astype(np.uint16), "MONOCHROME1"))
    assert header["inverted"] is True
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert_corner(corner_mask(mono1))


def test_dicom_without_pixels_is_refused(tmp_path):
    ref = make_dicom(tmp_path / "report.dcm", None, modality="SR")
    with pytest.raises(CXRInputError, match="report.dcm.*no pixel data"):
        read_cxr(ref)


def test_multi_frame_dicom_is_refused(tmp_path):
    ref = make_dicom(tmp_path / "cine.dcm", np.zeros((3, H, W), np.uint8))
    with pytest.raises(CXRInputError, match="cine.dcm.*3-D volume with 3 slices"):
        read_cxr(ref)


def test_extensionless_dicom_is_detected(tmp_path):
    ref = make_dicom(tmp_path / "IM0001", asymmetric())
    assert is_supported(ref)
    img, header = read_cxr(ref)
    assert header["format"] == "dicom" and img.shape == (H, W)
    assert default_mask_name(ref) == "IM0001_seg.dcm" and default_mask_name(ref, "dicom") == "IM0001_mask.dcm"


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize("name", ["empty.png", "empty.jpg", "empty.dcm", "empty.nii.gz", "empty.nrrd"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CXRInputError, match=name.replace(".", r"\.") + ".*empty"):
        read_cxr(tmp_path / name)


def _truncated(tmp_path: Path, name: str) -> Path:
    full = tmp_path / ("full_" + name)
    if name.endswith(".dcm"):
        make_dicom(full, asymmetric(np.uint16, 4000))
    elif name.endswith((".png", ".jpg")):
        Image.fromarray(asymmetric()).save(full)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(asymmetric(np.int16, 3000)), str(full))
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 2 // 3])
    return cut


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg", "cut.dcm", "cut.nii.gz", "cut.nii"])
def test_truncated_file(tmp_path, name):
    cut = _truncated(tmp_path, name)
    with pytest.raises(CXRInputError, match=name.replace(".", r"\.")):
        read_cxr(cut)


def test_unknown_extension_and_missing_file(tmp_path):
    bmp = tmp_path / "cxr.bmp"
    Image.fromarray(asymmetric()).save(bmp)
    assert not is_supported(bmp)
    with pytest.raises(CXRInputError, match=r"cxr\.bmp.*unknown file type"):
        read_cxr(bmp)
    with pytest.raises(CXRInputError, match="nothere.png.*does not exist"):
        read_cxr(tmp_path / "nothere.png")


def test_read_mask_binarises_and_checks_size(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[CORNER] = 3
    labels[20, 20] = 0  # stays background
    labels[CORNER[0], 4] = 200  # a third value: still foreground
    path = _save(tmp_path / "multi.png", labels)
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert_corner(mask)
    with pytest.raises(CXRInputError, match=r"multi\.png.*\(53, 37\).*img\.png.*\(40, 40\)"):
        read_mask(path, expected_shape=(40, 40), reference=tmp_path / "img.png")


def test_write_mask_size_mismatch(tmp_path):
    ref = _save(tmp_path / "cxr.png", asymmetric())
    with pytest.raises(CXRInputError, match="cxr.png"):
        write_mask_like(np.zeros((W, H), np.uint8), ref, tmp_path / "cxr_mask.png")


# ------------------------------------------------------------------ real data


def test_real_jsrt_image_and_mask(jsrt_dir):
    img, header = read_cxr(jsrt_dir / "images" / "JPCLN001.png")
    mask = read_mask(jsrt_dir / "masks" / "JPCLN001.png", expected_shape=header["shape"])
    assert img.shape == mask.shape == (224, 224) and 0.0 <= img.min() < img.max() <= 1.0
    half = mask.shape[1] // 2
    assert mask[:, :half].sum() > 500 and mask[:, half:].sum() > 500  # a lung in each half
    assert img[mask == 1].mean() < img[mask == 0].mean()  # aerated lungs are darker than the rest


def test_suffix_keeps_nii_gz_and_is_case_blind():
    from scripts.data.cxr_io import SUPPORTED_SUFFIXES, suffix

    assert suffix("/x/a.NII.GZ") == ".nii.gz" and suffix("b.png") == ".png"
    assert all(suffix(f"x{s}") == s for s in SUPPORTED_SUFFIXES)
