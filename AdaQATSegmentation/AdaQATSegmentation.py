"""AdaQAT lung segmentation of chest X-rays in 3D Slicer: a thin Qt front end to the AdaQAT MONAI bundle.

The widget only collects choices and shows progress; everything else is in ``AdaQATSegmentationLib``
(plain Python, tested with real MRML nodes outside Slicer). Inference runs the bundle's inference config
in a separate process, so the UI never freezes and Cancel stops it.
"""

from __future__ import annotations

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from AdaQATSegmentationLib import bundle_paths, bundle_process, dependencies, downloads, quality, sample_data
from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, RunDiscarded, SegmentationRequest, node_in_scene
from AdaQATSegmentationLib.volume_io import VolumeInputError

SETTINGS_BUNDLE = "AdaQATSegmentation/BundleFolder"
SETTINGS_THRESHOLD = "AdaQATSegmentation/QualityThreshold"
DONT_WARN_REVIEW = "AdaQATSegmentation/DontWarnReview"  # the review dialog's "don't show again"
REVIEW_STYLE = "color: #c92a2a; font-weight: bold;"  # red, bold: the mask needs checking
MODEL_KEYS = ("int8", "fp32", "file")
MODEL_LABELS = ("Bundled INT8 model (fast on CPU)", "Bundled FP32 model",
                "Model file (fine-tuned bundle checkpoint or official SAM .pth)")


class AdaQATSegmentation(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AdaQAT Lung Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AdaQAT project"]
        self.parent.helpText = (
            "Segments the lung fields of a chest X-ray (PNG, JPEG or DICOM CR/DX loaded as a single-slice volume) "
            "with the AdaQAT compact Segment Anything model (AdaLoRA + INT8), running the AdaQAT MONAI bundle in a "
            "separate process. The bundled model runs without PyTorch (its ONNX form in onnxruntime, installed on the "
            "first Apply after asking); a model file of your own runs through PyTorch. Cancel stops a run; Apply "
            "during a run cancels it and starts again; deleting the input volume or closing the scene cancels it "
            "(nothing is written). After each run the module shows "
            "the mask's quality score: a predicted Dice from the model's quality calibration (no reference mask needed). "
            "Under the threshold (0.90 by default; Advanced > Review below predicted Dice) the mask is marked "
            "'Review' in red: check it before using it. The score is kept on the segmentation node as the attributes "
            "AdaQAT.PredictedDice, AdaQAT.Review and AdaQAT.QualityThreshold (and as tags of its lung segments); a "
            "model without a calibration gets 'No quality score' with the reason. The bundled weights were trained "
            "on JSRT/SCR radiographs: research use only, not for diagnosis or any clinical use.")
        self.parent.acknowledgementText = (
            "Sample image: " + sample_data.ATTRIBUTION + ". Method: AdaLoRA-QAT (Deb et al., ISBI 2026).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the CC BY sample chest X-ray in the Sample Data module."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data.sample_source())


def _pip_install(requirements: str) -> None:
    """Slicer's pip helper under a wait cursor (the question was asked before)."""
    with slicer.util.WaitCursor():
        slicer.util.pip_install(requirements)


class AdaQATSegmentationWidget(ScriptedLoadableModuleWidget):
    """Inputs, Apply/Cancel, progress bar and log; the run itself is a child process polled by a timer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic: AdaQATSegmentationModuleLogic | None = None
        self._handle = None
        self._timer = None
        self._scene_observers: list[tuple[object, int]] = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/AdaQATSegmentation.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = AdaQATSegmentationModuleLogic()
        for label in MODEL_LABELS:
            self.ui.modelComboBox.addItem(label)
        self.ui.bundlePathLineEdit.currentPath = qt.QSettings().value(SETTINGS_BUNDLE, "") or ""
        self.ui.qualityThresholdSpinBox.value = float(qt.QSettings().value(SETTINGS_THRESHOLD, 0.0) or 0.0)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownload)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._update)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._update)
        self.ui.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._update)
        self._observe_scene(slicer.mrmlScene)
        self._update()

    def cleanup(self) -> None:
        self._abort(None)
        self._remove_scene_observers()
        if self._timer is not None:
            self._timer.stop()

    # --- the scene changing under a run: its result must never land on a node that is gone ---------------------

    def _observe_scene(self, scene) -> None:
        """Watch the scene for a run: closing it cancels the run, removing the run's input volume too."""
        self._remove_scene_observers()
        self._scene_observers = [(scene, scene.AddObserver(scene.StartCloseEvent, self._on_scene_start_close)),
                                 (scene, scene.AddObserver(scene.NodeRemovedEvent, self._on_node_removed))]

    def _remove_scene_observers(self) -> None:
        for scene, tag in self._scene_observers:
            scene.RemoveObserver(tag)
        self._scene_observers = []

    def _on_scene_start_close(self, _scene, _event) -> None:
        if getattr(self, "_handle", None) is not None:  # getattr: the scene may outlive the widget at exit
            self._abort("Scene closed: segmentation cancelled, nothing was written")

    def _on_node_removed(self, scene, _event) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not node_in_scene(scene, handle.request.volume_node):
            self._abort(f"Input volume '{handle.request.volume_node.GetName()}' was removed: "
                        "segmentation cancelled, nothing was written")

    def _abort(self, reason: str | None) -> None:
        """Stop the current run and throw its result away (the child killed and reaped, its files deleted, no node
        touched); ``reason`` goes to the log and the status bar. Called from scene events: never raises."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            if self._timer is not None:
                self._timer.stop()
            self.logic.discard(handle)
            self.ui.progressBar.value = 0
            if reason:
                self._log(reason)
                slicer.util.showStatusMessage(reason, 10000)
            self._update()
        except Exception as exc:  # noqa: BLE001  an observer callback must not raise into the scene
            print(f"AdaQAT: stopping the run failed: {exc}")

    def _update(self, *_args) -> None:
        running = self._handle is not None
        self.ui.modelFilePathLineEdit.enabled = MODEL_KEYS[self.ui.modelComboBox.currentIndex] == "file"
        self.ui.refineBoxCheckBox.enabled = self.ui.roiSelector.currentNode() is not None
        self.ui.promptComboBox.enabled = self.ui.roiSelector.currentNode() is None
        # Apply stays enabled during a run: pressing it cancels the run and starts a new one
        self.ui.applyButton.enabled = self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.cancelButton.enabled = running

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _request(self) -> SegmentationRequest:
        prompt = ("two_pass", "whole")[self.ui.promptComboBox.currentIndex]
        device = ("auto", "cpu", "cuda")[self.ui.deviceComboBox.currentIndex]
        return SegmentationRequest(
            volume_node=self.ui.inputVolumeSelector.currentNode(),
            model=MODEL_KEYS[self.ui.modelComboBox.currentIndex],
            model_file=self.ui.modelFilePathLineEdit.currentPath or None,
            roi_node=self.ui.roiSelector.currentNode(), refine_box=self.ui.refineBoxCheckBox.checked,
            prompt=prompt, device=device, quality_threshold=self.ui.qualityThresholdSpinBox.value or None)

    def onApply(self, *_args, request: SegmentationRequest | None = None) -> None:
        """Install what is missing (after asking), then start the run; errors go to a dialog. A run still going is
        cancelled first (its result discarded): only the newest Apply's result lands."""
        replaced = self._handle is not None
        self._abort(None)
        self.ui.logTextEdit.clear()
        if replaced:
            self._log("the previous run was cancelled and replaced by this one")
        self._show_quality(None)
        qt.QSettings().setValue(SETTINGS_BUNDLE, self.ui.bundlePathLineEdit.currentPath)
        qt.QSettings().setValue(SETTINGS_THRESHOLD, self.ui.qualityThresholdSpinBox.value)
        self.logic.bundle_folder = self.ui.bundlePathLineEdit.currentPath or None
        try:
            request = request or self._request()
            _model, route = self.logic.model_and_route(request)
            installed = dependencies.install_missing(
                confirm=slicer.util.confirmOkCancelDisplay, pip_install=_pip_install,
                install_torch=dependencies.slicer_torch_installer(), requirements=dependencies.requirements_for(route))
            if installed:
                self._log("installed: " + ", ".join(installed))
            self._handle = self.logic.start(request)
        except (VolumeInputError, FileNotFoundError, ValueError, dependencies.DependencyError,
                bundle_process.BundleRunError) as exc:
            slicer.util.errorDisplay(f"Cannot segment: {exc}", detailedText=getattr(exc, "log", None) or "")
            return
        self._log(" ".join(self._handle.process.command))
        self.ui.progressBar.value = 0
        self._timer.start()
        self._update()

    def onCancel(self, *_args) -> None:
        if self._handle is not None:
            self._log("cancelling...")
            self.logic.cancel(self._handle)

    def _poll(self) -> None:
        handle = self._handle
        if handle is None:  # aborted (scene closed, input removed) between two ticks
            self._timer.stop()
            return
        for line in handle.process.poll():
            self._log(line)
        self.ui.progressBar.value = int(100 * handle.process.progress)
        if handle.process.running():
            return
        self._timer.stop()
        self._handle = None
        try:
            node = self.logic.finish(handle)
        except RunDiscarded as exc:  # the input left the scene just as the run ended
            self._log(str(exc))
            slicer.util.showStatusMessage(str(exc), 10000)
            self.ui.progressBar.value = 0
        except bundle_process.BundleCancelled:
            self._log("cancelled")
            self.ui.progressBar.value = 0
        except bundle_process.BundleOutOfMemoryError as exc:
            if handle.request.device != "cpu" and slicer.util.confirmYesNoDisplay(
                    f"{exc}.\n\nRun again on the CPU?", detailedText=exc.log):
                handle.request.device = "cpu"
                self.ui.deviceComboBox.currentIndex = 1
                self.onApply(request=handle.request)
                return
            slicer.util.errorDisplay(str(exc), detailedText=exc.log)
        except (bundle_process.BundleRunError, ValueError, OSError) as exc:
            slicer.util.errorDisplay(f"Segmentation failed: {exc}", detailedText=getattr(exc, "log", "") or "")
        except Exception as exc:  # noqa: BLE001  a timer callback: show it rather than leave a traceback
            import traceback

            slicer.util.errorDisplay(f"Segmentation failed: {exc}", detailedText=traceback.format_exc())
        else:
            self.ui.progressBar.value = 100
            self._log(f"done: segmentation '{node.GetName()}'")
            slicer.util.setSliceViewerLayers(background=handle.request.volume_node, fit=True)
            self._show_quality(handle.quality, node)
        self._update()

    def _show_quality(self, result: quality.QualityResult | None, node=None) -> None:
        """The mask's quality in the status label (red for review, with a warning that can be turned off);
        None clears it (a new run)."""
        label = self.ui.qualityLabel
        if result is None:
            label.text, label.styleSheet = "", ""
            return
        text = result.text()
        label.text = text
        label.styleSheet = REVIEW_STYLE if result.review else ""
        self._log(text)
        if result.review:
            name = f" '{node.GetName()}'" if node is not None else ""
            slicer.util.showStatusMessage(text, 10000)
            slicer.util.warningDisplay(
                f"The segmentation{name} may be poor: its predicted Dice is {result.predicted_dice:.2f}, under "
                f"{result.threshold:.2f}. Check the mask (and correct it in Segment Editor) before using it.",
                windowTitle="AdaQAT: check this mask", dontShowAgainSettingsKey=DONT_WARN_REVIEW)

    def onDownload(self, *_args) -> None:
        """Fetch the listed models (large_files.yml) this bundle copy lacks (asks first, shows size and progress)."""
        try:
            root = bundle_paths.find_bundle(self.ui.bundlePathLineEdit.currentPath or None)
            entries = [e for e in downloads.large_files(root) if not (root / e.path).is_file()]  # what this copy lacks
            for entry in entries:
                dialog = slicer.util.createProgressDialog(labelText=f"Downloading {entry.path}", maximum=100)

                def progress(fraction: float, dialog=dialog) -> bool:
                    dialog.value = int(100 * fraction)
                    slicer.app.processEvents()
                    return not dialog.wasCanceled

                try:
                    self._log(f"downloaded {downloads.download(entry, root, slicer.util.confirmOkCancelDisplay, progress)}")
                finally:
                    dialog.close()
        except (downloads.DownloadError, OSError) as exc:
            slicer.util.errorDisplay(f"Download failed: {exc}")


class AdaQATSegmentationModuleLogic(ScriptedLoadableModuleLogic):
    """Slicer-facing logic: the library's logic on the application's scene and bundle folder."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.bundle_folder: str | None = None

    def _logic(self) -> AdaQATSegmentationLogic:
        return AdaQATSegmentationLogic(slicer.mrmlScene, self.bundle_folder)

    def model_and_route(self, request: SegmentationRequest):
        return self._logic().model_and_route(request)

    def start(self, request: SegmentationRequest):
        return self._logic().start(request)

    def finish(self, handle):
        return self._logic().finish(handle)

    def cancel(self, handle) -> None:
        self._logic().cancel(handle)

    def discard(self, handle) -> None:
        self._logic().discard(handle)

    def run(self, request: SegmentationRequest, timeout_s: float | None = None):
        return self._logic().run(request, timeout_s)


class AdaQATSegmentationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test, or ctest): sample data in, lungs out."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_rejects_3d_volume()
        self.setUp()
        self.test_segments_sample()

    def test_rejects_3d_volume(self) -> None:
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((3, 64, 64), dtype=np.uint8), name="ct")
        with self.assertRaises(VolumeInputError):
            AdaQATSegmentationModuleLogic().start(SegmentationRequest(volume_node=volume))

    def test_segments_sample(self) -> None:
        import SampleData

        registerSampleData()
        volume = SampleData.downloadSample(sample_data.SAMPLE_NAME)
        self.assertIsNotNone(volume)
        models = bundle_paths.bundled_models(bundle_paths.find_bundle())
        route = bundle_paths.resolve_route("auto", models[0].key, models[0].path) if models else "onnx"
        missing = dependencies.missing(dependencies.requirements_for(route))
        if missing:
            self.delayDisplay("skipped: packages not installed: " + ", ".join(r.module for r in missing))
            return
        if not models:
            self.delayDisplay("skipped: no bundled model in the bundle's models/ folder")
            return
        node = AdaQATSegmentationModuleLogic().run(
            SegmentationRequest(volume_node=volume, model=models[0].key, device="cpu"), timeout_s=900)
        segmentation = node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "lung")
        lung = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(0), volume)
        self.assertGreater(lung.mean(), 0.1)  # the lungs cover a good part of a chest X-ray
        # the mask's quality: a predicted Dice, or the reason there is none (a model without calibration)
        self.assertTrue(node.GetAttribute(quality.PREDICTED_DICE) or node.GetAttribute(quality.UNAVAILABLE))
        self.delayDisplay("lungs segmented")
