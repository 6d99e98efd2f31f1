"""End to end: a JSRT (or DICOM) volume node in, the bundle run out of process by the module's logic with
the FP32 and INT8 models, a segmentation node out — checked against the reference mask from the node's
own array. Real MRML (slicer-core), the real engine, real images; no Slicer application.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import slicer_fixtures as sf
from conftest import optional_module

slicer = optional_module("slicer", "the slicer-core wheel (test extra) gives real MRML")

from AdaQATSegmentationLib import bundle_process, segmentation_output, volume_io  # noqa: E402
from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, SegmentationRequest  # noqa: E402
from dicom_writer import make_dicom  # noqa: E402

pytestmark = pytest.mark.e2e

MIN_DICE = 0.8


@pytest.fixture(scope="module")
def bundle_with_models(shipped_models, tmp_path_factory) -> Path:
    """The repo's bundle as a fresh clone has it: the shipped models and the INT8 model's ONNX form."""
    root = tmp_path_factory.mktemp("bundle") / "monai_bundle"
    root.mkdir(parents=True)
    for name in ("configs", "scripts", "models", "LICENSE", "large_files.yml"):
        (root / name).symlink_to(sf.REPO / "monai_bundle" / name)
    return root


def test_first_click_runs_the_shipped_model_without_pytorch(bundle_with_models, jsrt_dir, tmp_path, monkeypatch):
    """The default request (bundled INT8, route auto) takes the torch-free route: the child is the predictor on the
    shipped ONNX graphs, and it segments although ``import torch`` fails in its Python."""
    blocked = tmp_path / "no_torch" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('torch is not installed (blocked by the test)')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocked.parent))
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, jsrt_dir / "images" / "JPCLN120.png", "JPCLN120")
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    handle = logic.start(SegmentationRequest(volume))
    assert handle.route == "onnx" and "scripts.deploy.predictor" in handle.process.command
    handle.process.wait(600, raise_errors=False)
    node = logic.finish(handle)
    reference = sf.read_reference_mask(jsrt_dir / "masks" / "JPCLN120.png")
    assert _lung_dice(scene, node, volume, reference) > MIN_DICE


def _lung_dice(scene, node, volume, reference: np.ndarray) -> float:
    (segment_id,) = segmentation_output.own_segment_ids(node)
    assert node.GetSegmentation().GetSegment(segment_id).GetName() == "lung"
    return sf.dice(segmentation_output.segment_array(scene, node, segment_id, volume), reference)


def _geometry(node) -> str:
    return node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())


@pytest.mark.parametrize("model, route, image", [("fp32", "torch", "JPCNN010"), ("int8", "torch", "JPCLN120"),
                                                 ("int8", "onnx", "JPCNN010")])
def test_volume_in_lung_segmentation_out(bundle_with_models, jsrt_dir, model, route, image):
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, jsrt_dir / "images" / f"{image}.png", image)
    volume.SetSpacing(0.7, 0.7, 1.0)  # a real detector's pixel size and an off-centre origin
    volume.SetOrigin(80.0, 80.0, 0.0)
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    node = logic.run(SegmentationRequest(volume, model=model, device="cpu", route=route), timeout_s=600)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert _geometry(node).startswith("-0.7;0;0;80;0;-0.7;0;80;")
    reference = sf.read_reference_mask(jsrt_dir / "masks" / f"{image}.png")
    assert _lung_dice(scene, node, volume, reference) > MIN_DICE


def test_second_run_with_a_roi_box_replaces_own_output_and_keeps_user_segments(bundle_with_models, jsrt_dir):
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, jsrt_dir / "images" / "JPCNN020.png", "JPCNN020")
    reference = sf.read_reference_mask(jsrt_dir / "masks" / "JPCNN020.png")
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    first = logic.run(SegmentationRequest(volume, model="int8", prompt="whole", device="cpu"), timeout_s=600)
    user_segment = first.GetSegmentation().AddEmptySegment("", "my annotation", [0.0, 1.0, 0.0])
    # ROI around the reference lungs (RAS from pixel edges) -> box prompt used as is
    rows, cols = np.nonzero(reference[0])
    ijk_to_ras = lambda i, j: (-(i - 0.5), -(j - 0.5))  # noqa: E731  PNG geometry: spacing 1, axes -R -A
    r0, a0 = ijk_to_ras(cols.min(), rows.min())
    r1, a1 = ijk_to_ras(cols.max() + 1, rows.max() + 1)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lungs box")
    roi.SetCenter((r0 + r1) / 2, (a0 + a1) / 2, 0.0)
    roi.SetSize(abs(r1 - r0), abs(a1 - a0), 1.0)
    assert volume_io.roi_to_box(roi, volume) == pytest.approx(
        (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), abs=1e-3)
    second = logic.run(SegmentationRequest(volume, model="int8", roi_node=roi, refine_box=False, device="cpu"),
                       timeout_s=600)
    assert second is first and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    segmentation = second.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2 and segmentation.GetSegment(user_segment) is not None
    assert _lung_dice(scene, second, volume, reference) > MIN_DICE


def test_dicom_volume_is_segmented_on_its_own_grid(bundle_with_models, shipped_models, jsrt_dir, tmp_path):
    import SimpleITK as sitk

    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(jsrt_dir / "images" / "JPCNN030.png")))
    dcm = make_dicom(tmp_path / "cxr.dcm", pixels, ImagePositionPatient=[-100.0, -80.0, 0.0],
                     ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, dcm, "DX chest")
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    node = logic.run(SegmentationRequest(volume, model="file", model_file=str(shipped_models["fp32"]), device="cpu"),
                     timeout_s=600)
    assert _geometry(node).startswith("-0.25;0;0;100;0;-0.5;0;80;")  # PixelSpacing (0.5 row, 0.25 column)
    reference = sf.read_reference_mask(jsrt_dir / "masks" / "JPCNN030.png")
    assert _lung_dice(scene, node, volume, reference) > MIN_DICE


def test_cancel_stops_the_run_and_leaves_no_output(bundle_with_models, jsrt_dir):
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, jsrt_dir / "images" / "JPCNN040.png", "JPCNN040")
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    handle = logic.start(SegmentationRequest(volume, model="fp32", device="cpu"))
    deadline = time.monotonic() + 120
    while not handle.process.lines and time.monotonic() < deadline:  # cancel once the engine has started
        handle.process.poll()
        time.sleep(0.1)
    assert handle.process.running()
    logic.cancel(handle)
    assert not handle.process.running()
    with pytest.raises(bundle_process.BundleCancelled):
        logic.finish(handle)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not handle.workdir.exists()


@pytest.mark.parametrize("route", ["torch", "onnx"])
def test_engine_refusal_reaches_the_user_with_the_log(bundle_with_models, route):
    scene = sf.new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank plate")
    slicer.util.updateVolumeFromArray(volume, np.full((1, 128, 128), 7, np.uint8))
    logic = AdaQATSegmentationLogic(scene, bundle_with_models)
    with pytest.raises(bundle_process.BundleRunError, match=r"volume 'blank plate': image is blank") as info:
        logic.run(SegmentationRequest(volume, model="int8", device="cpu", route=route), timeout_s=600)
    assert "blank_plate.nrrd" in info.value.log
    if route == "torch":  # the bundle's input screen also writes its report
        assert "failures_inputs.json" in info.value.log
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
