"""The Slicer module's library against real MRML nodes (slicer-core wheel), without the application.

Volume nodes come from a real JSRT radiograph and from a DICOM; bad volumes must give clear errors; the
output segmentation node must have the input's geometry, the standard names and terminology, and a
second run must replace only the module's own segments. The engine is not run here (see
test_slicer_run.py); its process handling is checked with a stand-in ``adaqat.cli``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import slicer_fixtures as sf
from conftest import optional_module

slicer = optional_module("slicer", "the slicer-core wheel (test extra) gives real MRML")
import SimpleITK as sitk  # noqa: E402
from AdaQATSegmentationLib import (  # noqa: E402
    bundle_paths,
    bundle_process,
    dependencies,
    downloads,
    sample_data,
    segmentation_output,
    volume_io,
)
from dicom_writer import make_dicom  # noqa: E402

JSRT_IMAGE = "images/JPCLN001.png"


@pytest.fixture()
def scene():
    return sf.new_scene()


@pytest.fixture()
def jsrt_volume(scene, jsrt_dir):
    return sf.volume_from_file(scene, jsrt_dir / JSRT_IMAGE, "JPCLN001")


def _matrix(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# ---------------------------------------------------------------------------------------------
# volume node -> file for the bundle
# ---------------------------------------------------------------------------------------------

def test_jsrt_volume_is_written_with_its_pixels_and_geometry(jsrt_volume, jsrt_dir, tmp_path):
    png = sitk.ReadImage(str(jsrt_dir / JSRT_IMAGE))
    assert volume_io.check_radiograph_volume(jsrt_volume) == (png.GetHeight(), png.GetWidth())
    written = volume_io.write_volume(jsrt_volume, tmp_path / "in.nrrd")
    image = sitk.ReadImage(str(written))
    assert image.GetSize() == (png.GetWidth(), png.GetHeight(), 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], sitk.GetArrayFromImage(png))
    # the PNG's LPS geometry comes back from Slicer's RAS node unchanged (origin 0, identity, spacing 1)
    np.testing.assert_allclose(image.GetOrigin(), png.GetOrigin() + (0.0,), atol=1e-6)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6)
    np.testing.assert_allclose(_matrix(jsrt_volume)[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-6)


def test_dicom_volume_keeps_spacing_and_origin_through_the_file(scene, jsrt_dir, tmp_path):
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(jsrt_dir / JSRT_IMAGE)))
    dcm = make_dicom(tmp_path / "cxr.dcm", pixels, ImagePositionPatient=[-100.0, -80.0, 50.0],
                     ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    reference = sitk.ReadImage(str(dcm))
    volume = sf.volume_from_file(scene, dcm, "dicom cxr")
    assert volume.GetSpacing()[:2] == pytest.approx((0.25, 0.5))  # PixelSpacing is (row, column)
    written = sitk.ReadImage(str(volume_io.write_volume(volume, tmp_path / "in.nrrd")))
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing()[:2], reference.GetSpacing()[:2], atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[0], pixels)
    # what the engine will write back in this geometry is accepted and lands on the same grid
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(written) > 100).astype(np.uint8))
    mask.CopyInformation(written)
    sitk.WriteImage(mask, str(tmp_path / "in_mask.nrrd"))
    labels = volume_io.read_mask(tmp_path / "in_mask.nrrd", volume)
    assert labels.shape == (1,) + pixels.shape and labels.sum() == (pixels > 100).sum()


def test_inverted_display_volume_is_written_flipped_and_node_untouched(jsrt_volume, tmp_path):
    before = slicer.util.arrayFromVolume(jsrt_volume).copy()
    jsrt_volume.GetDisplayNode().SetAndObserveColorNodeID(volume_io.INVERTED_GREY)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(volume_io.write_volume(jsrt_volume, tmp_path / "in.nrrd"))))
    np.testing.assert_array_equal(written, before.max() - before + before.min())
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(jsrt_volume), before)


def test_3d_volume_is_refused_naming_the_node_and_slices(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chest CT")
    slicer.util.updateVolumeFromArray(node, np.zeros((5, 64, 64), np.int16))
    with pytest.raises(volume_io.VolumeInputError, match=r"'chest CT' is a 3-D volume with 5 slices"):
        volume_io.check_radiograph_volume(node)


def test_empty_volume_is_refused(scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing")
    with pytest.raises(volume_io.VolumeInputError, match=r"'nothing' is empty"):
        volume_io.write_volume(node, tmp_path / "in.nrrd")
    assert not (tmp_path / "in.nrrd").exists()


def test_rgb_vector_volume_is_refused_with_the_conversion_hint(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    slicer.util.updateVolumeFromArray(node, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(volume_io.VolumeInputError, match=r"'photo' is a vector \(RGB/colour\) volume.*Vector to Scalar"):
        volume_io.check_radiograph_volume(node)


def test_scalar_node_with_rgb_pixels_is_refused(scene):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "rgb in scalar")
    image = vtk.vtkImageData()
    image.SetDimensions(32, 32, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    with pytest.raises(volume_io.VolumeInputError, match=r"3 components"):
        volume_io.check_radiograph_volume(node)


def test_no_volume_is_refused():
    with pytest.raises(volume_io.VolumeInputError, match="no input volume"):
        volume_io.check_radiograph_volume(None)


def test_mask_of_another_size_or_place_is_an_error_naming_the_file(jsrt_volume, tmp_path):
    small = sitk.Image(100, 100, 1, sitk.sitkUInt8)
    sitk.WriteImage(small, str(tmp_path / "small.nrrd"))
    with pytest.raises(ValueError, match=r"small\.nrrd: mask of size \(100, 100, 1\) does not match"):
        volume_io.read_mask(tmp_path / "small.nrrd", jsrt_volume)
    rows, cols = volume_io.check_radiograph_volume(jsrt_volume)
    shifted = sitk.Image(cols, rows, 1, sitk.sitkUInt8)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    with pytest.raises(ValueError, match=r"shifted\.nrrd: mask geometry"):
        volume_io.read_mask(tmp_path / "shifted.nrrd", jsrt_volume)
    with pytest.raises(FileNotFoundError, match="did not write"):
        volume_io.read_mask(tmp_path / "absent.nrrd", jsrt_volume)


def test_roi_becomes_a_pixel_box_and_a_roi_off_the_image_is_refused(scene, jsrt_volume):
    jsrt_volume.SetSpacing(0.5, 0.25, 1.0)
    jsrt_volume.SetOrigin(10.0, 20.0, 0.0)  # RAS; the axes point to -R and -A (from the PNG's LPS)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lungs")
    # box edges at columns 40..180 and rows 30..190: pixel k spans [k, k+1), its centre is IJK k
    roi.SetCenter(10 - 0.5 * 109.5, 20 - 0.25 * 109.5, 0.0)
    roi.SetSize(0.5 * 140, 0.25 * 160, 1.0)
    assert volume_io.roi_to_box(roi, jsrt_volume) == pytest.approx((40.0, 30.0, 180.0, 190.0), abs=1e-6)
    roi.SetCenter(1000.0, 1000.0, 0.0)
    with pytest.raises(volume_io.VolumeInputError, match="ROI 'lungs' does not overlap"):
        volume_io.roi_to_box(roi, jsrt_volume)


# ---------------------------------------------------------------------------------------------
# label array -> segmentation node
# ---------------------------------------------------------------------------------------------

def _reference(jsrt_dir) -> np.ndarray:
    return sf.read_reference_mask(jsrt_dir / "masks" / "JPCLN001.png")


def test_one_label_gives_segment_lung_in_the_input_geometry_with_terminology(scene, jsrt_volume, jsrt_dir):
    jsrt_volume.SetSpacing(0.7, 0.7, 1.0)
    jsrt_volume.SetOrigin(-3.0, 4.0, 0.0)
    labels = _reference(jsrt_dir)
    node = segmentation_output.write_output(scene, jsrt_volume, labels)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "lung"
    assert segment.GetColor() == pytest.approx(segmentation_output.LUNG_COLOR)
    terminology = segment.GetTerminology()
    assert "SCT^123037004^Anatomical Structure" in terminology and "SCT^39607008^Lung" in terminology
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is jsrt_volume
    array = segmentation_output.segment_array(scene, node, segmentation.GetNthSegmentID(0), jsrt_volume)
    np.testing.assert_array_equal(array, labels)  # exactly the mask, on exactly the input's grid
    geometry = segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry.startswith("-0.7;0;0;-3;0;-0.7;0;4;")
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # temporaries removed


def test_two_labels_give_right_and_left_lung(scene, jsrt_volume, jsrt_dir):
    labels = _reference(jsrt_dir)
    labels[..., labels.shape[-1] // 2:] *= 2  # image left = patient's right = label 1
    node = segmentation_output.write_output(scene, jsrt_volume, labels)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["right lung", "left lung"]
    assert "SCT^24028007^Right" in segmentation.GetNthSegment(0).GetTerminology()
    assert "SCT^7771000^Left" in segmentation.GetNthSegment(1).GetTerminology()
    left = segmentation_output.segment_array(scene, node, segmentation.GetNthSegmentID(1), jsrt_volume)
    np.testing.assert_array_equal(left, (labels == 2).astype(np.uint8))


def test_more_than_two_labels_is_an_error():
    with pytest.raises(ValueError, match="3 labels"):
        segmentation_output.segment_specs([1, 2, 3])


def test_second_run_replaces_own_segments_and_keeps_the_users(scene, jsrt_volume, jsrt_dir):
    labels = _reference(jsrt_dir)
    first = segmentation_output.write_output(scene, jsrt_volume, labels)
    user_id = first.GetSegmentation().AddEmptySegment("", "nodule (mine)", [1.0, 0.0, 0.0])
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user's own segmentation")
    other.GetSegmentation().AddEmptySegment("", "lung")
    smaller = labels.copy()
    smaller[..., :, :100] = 0
    second = segmentation_output.write_output(scene, jsrt_volume, smaller)
    assert second is first
    segmentation = second.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["lung", "nodule (mine)"]
    assert segmentation.GetSegment(user_id) is not None
    (own,) = segmentation_output.own_segment_ids(second)
    np.testing.assert_array_equal(segmentation_output.segment_array(scene, second, own, jsrt_volume), smaller)
    assert other.GetSegmentation().GetNumberOfSegments() == 1  # another node is never touched
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


def test_output_follows_the_volume_transform(scene, jsrt_volume, jsrt_dir):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    jsrt_volume.SetAndObserveTransformNodeID(transform.GetID())
    node = segmentation_output.write_output(scene, jsrt_volume, _reference(jsrt_dir))
    assert node.GetTransformNodeID() == transform.GetID()


# ---------------------------------------------------------------------------------------------
# the extension's files
# ---------------------------------------------------------------------------------------------

def _cmake_list(text: str, variable: str) -> list[str]:
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "AdaQATSegmentation") for line in block.splitlines() if line.strip()]


def test_module_cmakelists_lists_every_python_file_and_resource():
    text = (sf.MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(_cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    on_disk = {p.relative_to(sf.MODULE_DIR).as_posix() for p in sf.MODULE_DIR.rglob("*.py")
               if "Testing" not in p.parts and "__pycache__" not in p.parts}
    assert listed == on_disk
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    assert {"Resources/UI/AdaQATSegmentation.ui", "Resources/Icons/AdaQATSegmentation.png"} <= set(resources)
    assert all((sf.MODULE_DIR / r).is_file() for r in resources)
    assert "WITH_GENERIC_TESTS" in text and "add_subdirectory(Testing)" in text
    testing = sf.MODULE_DIR / "Testing" / "Python"
    for script in testing.glob("*.py"):
        assert script.name in (testing / "CMakeLists.txt").read_text()


def test_extension_cmakelists_has_the_index_fields():
    text = (sf.REPO / "CMakeLists.txt").read_text()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer" in text and "add_subdirectory(AdaQATSegmentation)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text
    assert 'VERSION_LESS "5.10"' in text


def test_icon_is_128_png_and_ui_names_the_widgets_the_module_uses():
    from PIL import Image

    with Image.open(sf.MODULE_DIR / "Resources" / "Icons" / "AdaQATSegmentation.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    ui = (sf.MODULE_DIR / "Resources" / "UI" / "AdaQATSegmentation.ui").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", (sf.MODULE_DIR / "AdaQATSegmentation.py").read_text()))
    declared = set(re.findall(r'name="(\w+)"', ui))
    assert used and used <= declared, used - declared


def test_library_imports_neither_qt_nor_the_engine():
    """Importing the library (as Slicer does at start-up) must not pull torch/MONAI/Qt: installs happen
    on Apply, after asking, never at import."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "import AdaQATSegmentationLib.logic, AdaQATSegmentationLib.dependencies, AdaQATSegmentationLib.downloads;"
            "bad = [m for m in ('torch', 'monai', 'qt', 'ctk', 'segment_anything') if m in sys.modules];"
            "print('loaded', bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(sf.MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_is_the_committed_cc_by_image_with_its_checksum(tmp_path):
    source = sample_data.sample_source()
    local = sample_data.local_sample()
    assert local is not None and source["uris"] == local.as_uri()
    assert hashlib.sha256(local.read_bytes()).hexdigest() == sample_data.SHA256
    # Sample Data fetches with urllib.request.urlretrieve, then checks the SHA256: the same here
    fetched, _ = urllib.request.urlretrieve(source["uris"], str(tmp_path / source["fileNames"]))
    assert hashlib.sha256(Path(fetched).read_bytes()).hexdigest() == sample_data.SHA256
    assert source["checksums"] == f"SHA256:{sample_data.SHA256}"
    assert Path(source["thumbnailFileName"]).is_file()
    manifest = (sf.REPO / "sample_data" / "cxr_ccby_512" / "manifest.csv").read_text()
    assert re.search(r"images/0a7faa2a\.png,.*,CC BY", manifest)


# ---------------------------------------------------------------------------------------------
# bundle, models, dependencies, downloads
# ---------------------------------------------------------------------------------------------

def test_bundle_is_found_beside_the_module_and_models_resolve_with_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAQAT_BUNDLE", raising=False)
    assert bundle_paths.find_bundle() == (sf.REPO / "monai_bundle").resolve()
    with pytest.raises(bundle_paths.BundleNotFoundError, match=r"not-a-bundle: not the AdaQAT bundle folder"):
        bundle_paths.find_bundle(tmp_path / "not-a-bundle")
    fake = tmp_path / "bundle"
    (fake / "configs").mkdir(parents=True)
    (fake / "scripts").mkdir()
    (fake / "configs" / "inference.json").write_text("{}")
    (fake / "scripts" / "__init__.py").write_text("")
    assert bundle_paths.find_bundle(fake) == fake.resolve()
    with pytest.raises(FileNotFoundError, match=r"model_int8\.pt: model file not found.*--install-models"):
        bundle_paths.resolve_model("int8", fake)
    (fake / "models").mkdir()
    (fake / "models" / "model.pt").write_bytes(b"x")
    assert [m.key for m in bundle_paths.bundled_models(fake)] == ["fp32"]
    assert bundle_paths.resolve_model("fp32", fake) == (fake / "models" / "model.pt").resolve()
    with pytest.raises(ValueError, match=r"notes\.txt: not a model file"):
        bundle_paths.resolve_model("file", fake, tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="choose a model file"):
        bundle_paths.resolve_model("file", fake, None)


def test_route_is_torch_free_for_bundled_models_with_their_onnx_form(tmp_path):
    model = tmp_path / "models" / "model_int8.pt"
    model.parent.mkdir()
    model.write_bytes(b"x")
    assert bundle_paths.resolve_route("auto", "int8", model) == "torch"  # no ONNX form yet
    with pytest.raises(FileNotFoundError, match=r"model_int8\.pt: no ONNX form.*adaqat export-onnx"):
        bundle_paths.resolve_route("onnx", "int8", model)
    (tmp_path / "models" / "model_int8.encoder-256.onnx").write_bytes(b"x")
    assert bundle_paths.resolve_route("auto", "int8", model) == "torch"  # one graph is not the model
    (tmp_path / "models" / "model_int8.decoder-256.onnx").write_bytes(b"x")
    assert bundle_paths.resolve_route("auto", "int8", model) == "onnx"
    assert bundle_paths.resolve_route("auto", "file", model) == "torch"  # a user's file: PyTorch unless asked
    assert bundle_paths.resolve_route("onnx", "file", model) == "onnx"
    assert bundle_paths.resolve_route("torch", "int8", model) == "torch"
    with pytest.raises(ValueError, match="unknown route 'gpu'"):
        bundle_paths.resolve_route("gpu", "int8", model)


def test_torch_free_route_needs_only_onnxruntime_beside_what_slicer_ships():
    onnx = {r.module for r in dependencies.requirements_for("onnx")}
    assert onnx == {"onnxruntime", "numpy", "SimpleITK", "pydicom", "PIL"}
    assert not [r for r in dependencies.requirements_for("onnx") if r.via_pytorch_extension]
    assert {"torch", "monai", "onnxruntime"} <= {r.module for r in dependencies.requirements_for("torch")}
    # what the predictor really imports, read from its code: nothing outside that set (and the standard library)
    import ast

    deploy = sf.REPO / "monai_bundle" / "scripts" / "deploy"
    data = sf.REPO / "monai_bundle" / "scripts" / "data"
    imported = set()
    for path in [*deploy.glob("*.py"), data / "cxr_io.py", data / "mask_write.py", data / "input_screen.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "__future__"}
    assert third_party <= onnx | {"nibabel"}, third_party  # nibabel: NIfTI files only, which Slicer writes as NRRD


def test_dependency_pins_are_the_engines():
    setup = (sf.REPO / "setup.py").read_text()
    for requirement in dependencies.REQUIREMENTS:
        if requirement.pip and "==" in requirement.pip:
            assert f'"{requirement.pip}"' in setup, requirement.pip
    assert {r.module for r in dependencies.REQUIREMENTS if r.via_pytorch_extension} == {"torch", "torchvision"}


def test_install_asks_first_and_uses_pytorch_extension_then_pip():
    missing_torch = dependencies.Requirement("adaqat_missing_torch_xyz", None, via_pytorch_extension=True)
    missing_pkg = dependencies.Requirement("adaqat_missing_pkg_xyz", "adaqat-missing-pkg==1.0")
    present = dependencies.Requirement("json", "json")
    calls: list[str] = []
    with pytest.raises(dependencies.DependencyError, match="not installed: adaqat_missing_torch_xyz, adaqat_missing_pkg_xyz"):
        dependencies.install_missing(lambda msg: calls.append(msg) or False, calls.append, lambda: calls.append("torch"),
                                     [missing_torch, missing_pkg, present])
    assert len(calls) == 1 and "PyTorch extension" in calls[0] and "adaqat-missing-pkg==1.0" in calls[0]
    calls.clear()
    with pytest.raises(dependencies.DependencyError, match="still missing"):  # the fakes install nothing
        dependencies.install_missing(lambda msg: True, calls.append, lambda: calls.append("torch") or True,
                                     [missing_torch, missing_pkg, present])
    assert calls == ["torch", "adaqat-missing-pkg==1.0"]
    assert dependencies.install_missing(lambda msg: pytest.fail("asked"), calls.append, lambda: True, [present]) == []


def test_download_asks_with_size_checks_the_hash_in_a_child_and_reports_progress(tmp_path):
    payload = os.urandom(3 * 2**20 + 17)
    source = tmp_path / "model_int8.pt"
    source.write_bytes(payload)
    entry = downloads.LargeFile("models/model_int8.pt", source.as_uri(), hashlib.sha256(payload).hexdigest(), "sha256")
    bundle = tmp_path / "bundle"
    questions, seen = [], []
    assert not (bundle / entry.path).exists()
    with pytest.raises(downloads.DownloadError, match="declined"):
        downloads.download(entry, bundle, lambda q: questions.append(q) or False, python=sys.executable)
    assert "3.0 MB" in questions[0] and not (bundle / entry.path).exists()
    path = downloads.download(entry, bundle, lambda q: True, seen.append, python=sys.executable)
    assert path.read_bytes() == payload and seen[-1] == 1.0 and seen == sorted(seen)
    bad = downloads.LargeFile("models/model.pt", source.as_uri(), "0" * 64, "sha256")
    with pytest.raises(downloads.DownloadError, match="check of downloaded file failed"):
        downloads.download(bad, bundle, lambda q: True, python=sys.executable)
    assert not (bundle / "models" / "model.pt").exists() and sorted(p.name for p in (bundle / "models").iterdir()) == ["model_int8.pt"]


def test_large_files_of_the_real_bundle_are_listed():
    entries = {e.path: e for e in downloads.large_files(sf.REPO / "monai_bundle")}
    assert {"models/foundation.pt", "models/model.pt", "models/model_int8.pt"} <= set(entries)
    int8 = entries["models/model_int8.pt"]
    assert int8.hash_type == "sha256"
    assert int8.hash_val == hashlib.sha256((sf.REPO / "monai_bundle" / int8.path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the child process (a stand-in for the engine's adaqat.cli)
# ---------------------------------------------------------------------------------------------

FAKE_ENGINE = textwrap.dedent("""
    import os, subprocess, sys, time


    def run(image, output_dir):
        mode = os.environ["FAKE_MODE"]
        if mode == "ok":
            print("[1/2] 50%|", end="\\r", flush=True)
            print("[2/2] 100%|", flush=True)
        elif mode == "oom":
            raise MemoryError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes")
        elif mode == "missing":
            raise ModuleNotFoundError("No module named 'monai'")
        elif mode == "fail":  # what the engine's input screen raises, wrapped by MONAI's config evaluation
            raise ValueError("cxr.nrrd: image is blank (constant pixel values)")
        elif mode in ("mask", "empty_mask"):  # write a mask as the engine does: input geometry, <stem>_mask.nrrd
            import SimpleITK as sitk
            img = sitk.ReadImage(image)
            mask = sitk.Cast(img > 100, sitk.sitkUInt8) if mode == "mask" else sitk.Image(img.GetSize(), sitk.sitkUInt8)
            mask.CopyInformation(img)
            sitk.WriteImage(mask, os.path.join(output_dir, os.path.basename(image)[:-5] + "_mask.nrrd"))
        elif mode == "hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open(os.environ["FAKE_PIDFILE"], "w").write(str(child.pid))
            print("[0/1] 0%|", flush=True)
            time.sleep(300)
""")
# A bundle whose inference config runs the stand-in engine above: the child (child_main.py) is the module's
# real one, MONAI's ConfigWorkflow included.
FAKE_CONFIG = {"imports": ["$import sys", "$sys.path.insert(0, @bundle_root)", "$import scripts", "$import scripts.fake_engine"],
               "bundle_root": ".", "dataset_dir": "", "output_dir": "", "model_path": "", "box": None, "prompt_mode": "two_pass",
               "device": "cpu", "run": ["$scripts.fake_engine.run(@dataset_dir, @output_dir)"]}


@pytest.fixture()
def fake_bundle(tmp_path):
    root = tmp_path / "fake_bundle"
    (root / "scripts").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "fake_engine.py").write_text(FAKE_ENGINE)
    (root / "configs" / "inference.json").write_text(json.dumps(FAKE_CONFIG))
    return root


def test_logic_round_trip_through_a_stand_in_engine(fake_bundle, scene, jsrt_volume, monkeypatch):
    """The logic's own plumbing (file out, process, mask back, node) with a stand-in engine that thresholds."""
    from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, SegmentationRequest

    (fake_bundle / "models").mkdir()
    (fake_bundle / "models" / "model_int8.pt").write_bytes(b"stand-in")
    logic = AdaQATSegmentationLogic(scene, fake_bundle, python=sys.executable)
    monkeypatch.setenv("FAKE_MODE", "mask")
    node = logic.run(SegmentationRequest(jsrt_volume, device="cpu"), timeout_s=120)
    (segment_id,) = segmentation_output.own_segment_ids(node)
    expected = (slicer.util.arrayFromVolume(jsrt_volume) > 100).astype(np.uint8)
    np.testing.assert_array_equal(segmentation_output.segment_array(scene, node, segment_id, jsrt_volume), expected)
    monkeypatch.setenv("FAKE_MODE", "empty_mask")
    with pytest.raises(ValueError, match="found no lung in volume 'JPCLN001'"):
        logic.run(SegmentationRequest(jsrt_volume, device="cpu"), timeout_s=120)
    assert segmentation_output.own_segment_ids(node) == [segment_id]  # the previous result is kept
    with pytest.raises(ValueError, match="unknown prompt"):
        logic.start(SegmentationRequest(jsrt_volume, prompt="points"))


def _start(fake_bundle, tmp_path, monkeypatch, mode, **options):
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "grandchild.pid"))
    return bundle_process.start_infer(fake_bundle, tmp_path / "in.nrrd", tmp_path, python=sys.executable, **options)


def test_command_carries_model_box_prompt_and_device(tmp_path):
    cmd = bundle_process.infer_command("b", "in.nrrd", "out", model="m.pt", box=(1, 2.5, 30, 40), refine_box=False,
                                       device="cpu", python="py")
    assert cmd[:5] == ["py", str(bundle_process.CHILD), "infer", "in.nrrd", "-o"]
    assert cmd[cmd.index("--bundle") + 1] == str(Path("b").resolve())
    assert cmd[cmd.index("--box") + 1:cmd.index("--box") + 5] == ["1.00", "2.50", "30.00", "40.00"]
    assert cmd[cmd.index("--prompt") + 1] == "box" and cmd[cmd.index("--device") + 1] == "cpu"
    refined = bundle_process.infer_command("b", "in.nrrd", "out", box=(1, 2, 3, 4), python="py")
    assert "--prompt" not in refined  # the engine's default two-pass refines the box
    assert bundle_process.infer_command("b", "i", "o", prompt="whole", python="py")[-2:] == ["--prompt", "whole"]
    env = bundle_process.child_environment(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path.resolve())
    onnx = bundle_process.infer_command("b", "in.nrrd", "out", model="m.pt", box=(1, 2, 3, 4), device="cuda",
                                        python="py", route="onnx")
    assert onnx[:4] == ["py", "-m", "scripts.deploy.predictor", "in.nrrd"] and "--device" not in onnx
    assert onnx[onnx.index("--model") + 1] == "m.pt" and "--box" in onnx


def test_successful_run_reports_progress_and_output(fake_bundle, tmp_path, monkeypatch):
    run = _start(fake_bundle, tmp_path, monkeypatch, "ok", model="m.pt", device="cpu")
    run.wait(timeout_s=60)
    assert run.progress == 1.0
    assert any("[1/2] 50%" in line for line in run.lines) and any("masks written" in line for line in run.lines)
    overrides = json.loads(next(line for line in run.lines if line.startswith("overrides")).split(" ", 1)[1])
    assert Path(overrides["model_path"]).name == "m.pt" and overrides["device"] == "$torch.device('cpu')"


@pytest.mark.parametrize("mode, error, text", [
    ("oom", bundle_process.BundleOutOfMemoryError, "ran out of memory.*try the CPU"),
    ("missing", bundle_process.MissingDependencyError, "lacks the package 'monai'"),
    ("fail", bundle_process.BundleRunError, r"exit code 1\): error: cxr\.nrrd: image is blank"),
])
def test_failures_are_typed_and_carry_the_log(fake_bundle, tmp_path, monkeypatch, mode, error, text):
    run = _start(fake_bundle, tmp_path, monkeypatch, mode)
    with pytest.raises(error, match=text) as info:
        run.wait(timeout_s=60)
    assert "overrides" in info.value.log  # the whole output, for the dialog's details
    if mode == "missing":
        assert info.value.module == "monai"


def test_cancel_stops_the_process_group(fake_bundle, tmp_path, monkeypatch):
    run = _start(fake_bundle, tmp_path, monkeypatch, "hang")
    pidfile = tmp_path / "grandchild.pid"
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pidfile.read_text())
    run.cancel(grace_s=5)
    assert not run.running()
    with pytest.raises(bundle_process.BundleCancelled):
        run.finish()
    assert _gone(grandchild, timeout_s=10)  # the engine's own children die with it


def test_timeout_stops_the_run_and_says_so(fake_bundle, tmp_path, monkeypatch):
    run = _start(fake_bundle, tmp_path, monkeypatch, "hang")
    with pytest.raises(bundle_process.BundleRunError, match="did not finish within 2 s"):
        run.wait(timeout_s=2)
    assert not run.running()


def _gone(pid: int, timeout_s: float) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie left for a PID 1 that does not reap)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False
