"""The Slicer module shows every user the mask's quality score (issue 15): real MRML (slicer-core), the real
bundle and shipped models, real images; the widget's display driven with stand-ins for its Qt widgets.

A JSRT radiograph gets a high predicted Dice and no review; a photograph that is not a chest X-ray (scikit-image's
``camera``, checked by hand with the predictor CLI first: predicted Dice 0.65 INT8/ONNX, 0.44 FP32/torch, both under
0.90) is marked review, with the red warning text in the module and the node's attributes set. A model without a
quality calibration says why there is no score instead of failing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import slicer_fixtures as sf
from conftest import optional_module
from test_slicer_module import module  # noqa: F401  (fixture: the module file with minimal Slicer stand-ins)

slicer = optional_module("slicer", "the slicer-core wheel (test extra) gives real MRML")

from AdaQATSegmentationLib import bundle_process, quality, segmentation_output  # noqa: E402
from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, SegmentationRequest  # noqa: E402

pytestmark = pytest.mark.e2e

JSRT_IMAGE = "JPCLN001"


@pytest.fixture(scope="module")
def camera_png(tmp_path_factory) -> Path:
    """A non-chest image: scikit-image's grey ``camera`` photograph (512 x 512) as a PNG."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("non_chest") / "camera.png"
    Image.fromarray(data.camera()).save(path)
    return path


def _bundle(tmp_path: Path, calibrated: bool = True) -> Path:
    """The repo's bundle as a fresh clone has it, optionally without the models' quality calibrations."""
    root = tmp_path / "monai_bundle"
    root.mkdir()
    for name in ("configs", "scripts", "LICENSE", "large_files.yml"):
        (root / name).symlink_to(sf.REPO / "monai_bundle" / name)
    (root / "models").mkdir()
    for path in (sf.REPO / "monai_bundle" / "models").iterdir():
        if calibrated:
            (root / "models" / path.name).symlink_to(path)
        elif path.name.startswith("model_int8.") and not path.name.endswith(quality.REPORT_SUFFIX):
            shutil.copy(path, root / "models")  # copies: the module resolves links to the model file
    return root


@pytest.fixture(scope="module")
def bundle(shipped_models, tmp_path_factory) -> Path:
    return _bundle(tmp_path_factory.mktemp("bundle"))


class _Widget(SimpleNamespace):
    """Stand-in for a Qt widget: any attribute can be set; unknown methods do nothing and return None."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _run_in_widget(mod, monkeypatch, volume, bundle_root: Path, **request):
    """Apply as the widget does it: the logic started, then the widget's timer callback polled until the run ends.
    Returns (widget ui, log lines, warning dialogs, status bar messages)."""
    warnings, status = [], []
    monkeypatch.setattr(slicer.util, "warningDisplay", lambda text, **kw: warnings.append((text, kw)), raising=False)
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, duration=0: status.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)
    log: list[str] = []
    widget = mod.AdaQATSegmentationWidget()
    widget.ui = _Widget(modelComboBox=_Widget(currentIndex=0), logTextEdit=_Widget(appendPlainText=log.append),
                        qualityLabel=_Widget(text="", styleSheet=""), progressBar=_Widget(value=0),
                        modelFilePathLineEdit=_Widget(), refineBoxCheckBox=_Widget(), promptComboBox=_Widget(),
                        applyButton=_Widget(), cancelButton=_Widget(), deviceComboBox=_Widget(),
                        roiSelector=_Widget(), inputVolumeSelector=_Widget(currentNode=lambda: volume))
    widget._timer = _Widget()
    widget.logic = mod.AdaQATSegmentationModuleLogic()
    widget.logic.bundle_folder = str(bundle_root)
    widget._show_quality(None)
    widget._handle = widget.logic.start(mod.SegmentationRequest(volume_node=volume, device="cpu", **request))
    deadline = time.monotonic() + 600
    while widget._handle is not None and time.monotonic() < deadline:
        widget._poll()
        time.sleep(0.1)
    assert widget._handle is None, "the run did not end"
    return widget.ui, log, warnings, status


def test_jsrt_radiograph_gets_a_score_without_review(module, bundle, jsrt_dir, monkeypatch):
    mod, _, _ = module
    volume = sf.volume_from_file(slicer.mrmlScene, jsrt_dir / "images" / f"{JSRT_IMAGE}.png", JSRT_IMAGE)
    ui, log, warnings, status = _run_in_widget(mod, monkeypatch, volume, bundle)
    assert any(line.startswith("done: segmentation") for line in log), log[-5:]
    node = segmentation_output.find_output_node(slicer.mrmlScene, volume)
    predicted = float(node.GetAttribute(quality.PREDICTED_DICE))
    assert predicted >= 0.9 and node.GetAttribute(quality.REVIEW) == "false"
    assert float(node.GetAttribute(quality.THRESHOLD)) == pytest.approx(0.9)
    assert node.GetAttribute(quality.UNAVAILABLE) is None
    (segment_id,) = segmentation_output.own_segment_ids(node)
    segment = node.GetSegmentation().GetSegment(segment_id)
    assert quality.segment_tag(segment, quality.PREDICTED_DICE) == node.GetAttribute(quality.PREDICTED_DICE)
    assert quality.segment_tag(segment, quality.REVIEW) == "false"
    assert ui.qualityLabel.text == f"Quality: predicted Dice {predicted:.2f} (\u2265 0.90, no review needed)"
    assert ui.qualityLabel.styleSheet == "" and warnings == [] and status == []


@pytest.mark.parametrize("model, route", [("int8", "onnx"), ("fp32", "torch")])
def test_non_chest_image_is_marked_review_with_a_visible_warning(module, bundle, camera_png, monkeypatch, model, route):
    mod, _, _ = module
    volume = sf.volume_from_file(slicer.mrmlScene, camera_png, "camera")
    ui, log, warnings, status = _run_in_widget(mod, monkeypatch, volume, bundle, model=model, route=route)
    node = segmentation_output.find_output_node(slicer.mrmlScene, volume)
    assert node is not None, log[-10:]
    predicted = float(node.GetAttribute(quality.PREDICTED_DICE))
    assert predicted < 0.9 and node.GetAttribute(quality.REVIEW) == "true"
    (segment_id,) = segmentation_output.own_segment_ids(node)
    assert quality.segment_tag(node.GetSegmentation().GetSegment(segment_id), quality.REVIEW) == "true"
    text = f"Review: predicted Dice {predicted:.2f} < 0.90 \u2014 check this mask before using it"
    assert ui.qualityLabel.text == text and "color: #c92a2a" in ui.qualityLabel.styleSheet
    assert text in log and status == [text]
    (dialog, options), = warnings
    assert f"predicted Dice is {predicted:.2f}, under 0.90" in dialog and "'camera lungs (AdaQAT)'" in dialog
    assert options["dontShowAgainSettingsKey"] == mod.DONT_WARN_REVIEW  # the user can turn the dialog off
    assert quality.from_node(node) == quality.QualityResult(round(predicted, 4), True, 0.9)


def test_a_threshold_of_the_users_reaches_the_report(bundle, jsrt_dir):
    """A stricter threshold than the calibration's (0.999) marks even a good JSRT mask review."""
    assert bundle_process.infer_command(bundle, "x.png", "out", model="m.pt", route="onnx",
                                        quality_threshold=0.999)[-2:] == ["--threshold", "0.999"]
    scene = sf.new_scene()
    volume = sf.volume_from_file(scene, jsrt_dir / "images" / f"{JSRT_IMAGE}.png", JSRT_IMAGE)
    logic = AdaQATSegmentationLogic(scene, bundle)
    handle = logic.start(SegmentationRequest(volume, quality_threshold=0.999))
    handle.process.wait(600, raise_errors=False)
    node = logic.finish(handle)
    assert handle.quality.threshold == pytest.approx(0.999) and handle.quality.review is True
    assert node.GetAttribute(quality.REVIEW) == "true" and node.GetAttribute(quality.THRESHOLD) == "0.9990"
    with pytest.raises(ValueError, match="not a Dice between 0 and 1"):
        logic.start(SegmentationRequest(volume, quality_threshold=1.5))


def test_model_without_calibration_says_why_and_still_segments(module, shipped_models, jsrt_dir, tmp_path, monkeypatch):
    mod, _, _ = module
    uncalibrated = _bundle(tmp_path, calibrated=False)
    volume = sf.volume_from_file(slicer.mrmlScene, jsrt_dir / "images" / f"{JSRT_IMAGE}.png", JSRT_IMAGE)
    ui, _log, warnings, _ = _run_in_widget(mod, monkeypatch, volume, uncalibrated)
    node = segmentation_output.find_output_node(slicer.mrmlScene, volume)
    assert node is not None and len(segmentation_output.own_segment_ids(node)) == 1
    reason = node.GetAttribute(quality.UNAVAILABLE)
    assert "no quality calibration for model_int8.pt" in reason
    assert node.GetAttribute(quality.PREDICTED_DICE) is None and node.GetAttribute(quality.REVIEW) is None
    assert ui.qualityLabel.text == f"No quality score ({reason})" and warnings == []


def test_report_reading_never_fails(tmp_path):
    mask = tmp_path / "x_mask.nrrd"
    report = tmp_path / "x_mask.quality.json"
    assert quality.report_path(mask) is None
    missing = quality.read_report(mask, ["loading", "quality score off: no calibration here"])
    assert not missing.available and missing.text() == "No quality score (no calibration here)"
    assert "wrote no quality report" in quality.read_report(mask).reason
    report.write_text('{"mask": "x_mask.nrrd", "predicted_dice": "high", "threshold": 0.9}')
    assert quality.read_report(mask).reason.startswith("unreadable quality report x_mask.quality.json")
    report.write_text('{"mask": "x_mask.nrrd", "predicted_dice": null, "unavailable": "no calibration for it"}')
    assert quality.read_report(mask).reason == "no calibration for it"
    (tmp_path / "other.quality.json").write_text('{"mask": "other_mask.nrrd", "predicted_dice": 0.99, "threshold": 0.9}')
    report.write_text('{"mask": "x_mask.nrrd", "predicted_dice": 0.41, "review": true, "threshold": 0.9}')
    assert quality.report_path(mask) == report  # the one naming this mask, not its neighbour
    result = quality.read_report(mask)
    assert result == quality.QualityResult(0.41, True, 0.9)
    assert result.text() == "Review: predicted Dice 0.41 < 0.90 \u2014 check this mask before using it"
