"""The Slicer module under bad conditions (issue 16, item 4): the scene changes while a run is going.

Real MRML (slicer-core) and the module's widget driven as in Slicer (``onApply``, the timer's ``_poll``, the
scene's observers) with stand-ins for its Qt widgets. "During a run" is made deterministic by a slow stand-in
child (a Python process that sleeps, with a worker in its process group that ignores SIGTERM, then writes a mask
as the engine does); one test uses the real torch-free predictor. Each test checks: no exception and no error
dialog, the message the user sees, the child (and its worker) gone, and which nodes hold a segmentation.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import slicer_fixtures as sf
from conftest import optional_module
from test_slicer_module import module  # noqa: F401  (fixture: the module file with minimal Slicer stand-ins)

slicer = optional_module("slicer", "the slicer-core wheel (test extra) gives real MRML")
psutil = pytest.importorskip("psutil")

from AdaQATSegmentationLib import bundle_process, segmentation_output  # noqa: E402
from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, RunDiscarded, SegmentationRequest  # noqa: E402

BUNDLE = sf.REPO / "monai_bundle"

# The stand-in engine: argv = image, output folder, seconds to sleep, file for its pid and its worker's pid.
FAKE_CHILD = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    import numpy as np
    import SimpleITK as sitk

    image_path, out, delay, pid_file = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    worker.stdout.readline()  # it ignores SIGTERM from now on
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {worker.pid}")
    os.replace(pid_file + ".tmp", pid_file)
    print("engine started", flush=True)
    time.sleep(delay)
    image = sitk.ReadImage(image_path)
    array = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    array[..., 8:-8, 8:-8] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    name = os.path.basename(image_path)[:-len(".nrrd")]
    sitk.WriteImage(mask, os.path.join(out, name + "_mask.nrrd"))
    print("masks written to " + out, flush=True)
    worker.kill()
    worker.wait()
""")


class _Widget(SimpleNamespace):
    """Stand-in for a Qt widget: any attribute can be set; unknown methods do nothing and return None."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _Settings:
    def value(self, key, default=None):
        return default

    def setValue(self, key, value):
        pass


class Session:
    """The module's widget on the application scene, with what the user would see recorded."""

    def __init__(self, mod, monkeypatch, tmp_path: Path, fake_delays: list[float] | None) -> None:
        self.scene = slicer.mrmlScene
        self.log: list[str] = []
        self.status: list[str] = []
        self.dialogs: list[str] = []
        self.children: list[tuple[int, int]] = []  # (child pid, worker pid) of each stand-in run
        self._tmp = tmp_path
        for name in ("errorDisplay", "warningDisplay"):
            monkeypatch.setattr(slicer.util, name, lambda text, **kw: self.dialogs.append(text), raising=False)
        monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, duration=0: self.status.append(text),
                            raising=False)
        monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)
        monkeypatch.setattr(mod.qt, "QSettings", _Settings, raising=False)
        monkeypatch.setattr(mod.dependencies, "install_missing", lambda **kw: [])
        if fake_delays is not None:
            self._delays = list(fake_delays)
            monkeypatch.setattr(bundle_process, "infer_command", self._fake_command)
        self.current = None  # the input volume selector's node
        self.widget = mod.AdaQATSegmentationWidget()
        self.widget.ui = _Widget(
            modelComboBox=_Widget(currentIndex=0), logTextEdit=_Widget(appendPlainText=self.log.append),
            qualityLabel=_Widget(text="", styleSheet=""), progressBar=_Widget(value=0),
            modelFilePathLineEdit=_Widget(currentPath=""), refineBoxCheckBox=_Widget(checked=True),
            promptComboBox=_Widget(currentIndex=0), deviceComboBox=_Widget(currentIndex=1),
            applyButton=_Widget(enabled=False), cancelButton=_Widget(enabled=False),
            roiSelector=_Widget(currentNode=lambda: None), inputVolumeSelector=_Widget(currentNode=lambda: self.current),
            bundlePathLineEdit=_Widget(currentPath=str(BUNDLE)), qualityThresholdSpinBox=_Widget(value=0.0))
        self.widget._timer = _Widget()
        self.widget.logic = mod.AdaQATSegmentationModuleLogic()
        self.widget._observe_scene(self.scene)  # as setup() does

    def _fake_command(self, bundle_root, image, output_dir, **options) -> list[str]:
        script = self._tmp / "fake_engine.py"
        script.write_text(FAKE_CHILD)
        pid_file = self._tmp / f"pids{len(self.children)}_{time.monotonic_ns()}"
        self._pid_files = getattr(self, "_pid_files", []) + [pid_file]
        return [sys.executable, str(script), str(image), str(output_dir), str(self._delays.pop(0)), str(pid_file)]

    def volume(self, name: str):
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.random.default_rng(0).integers(0, 255, (1, 64, 64), np.uint8))
        return node

    def apply(self, volume):
        """Select ``volume`` and press Apply; returns the run's process (a Popen)."""
        self.current = volume
        self.widget.onApply()
        assert self.widget._handle is not None, (self.dialogs, self.log)
        return self.widget._handle.process._process

    def wait_started(self, timeout_s: float = 30) -> tuple[int, int]:
        """Until the stand-in child wrote its pids: it is running, mid-run."""
        pid_file = self._pid_files[-1]
        deadline = time.monotonic() + timeout_s
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the child did not start"
            self.widget._poll()
            time.sleep(0.05)
        child, worker = (int(v) for v in pid_file.read_text().split())
        assert psutil.pid_exists(child) and psutil.pid_exists(worker)
        return child, worker

    def poll_until_idle(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.widget._handle is not None:
            assert time.monotonic() < deadline, "the run did not end"
            self.widget._poll()
            time.sleep(0.05)
        self.widget._poll()  # a timer tick after the end must be harmless

    def segmentation_nodes(self) -> list:
        nodes = self.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """The process has ended (a zombie awaiting its new parent's reaping counts as ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _assert_stopped(process, pids=()) -> None:
    assert process.poll() is not None, "the child is still running"
    assert process.returncode != 0  # it was stopped, it did not finish
    with pytest.raises(ChildProcessError):  # reaped: not left as a zombie of ours
        os.waitpid(process.pid, os.WNOHANG)
    for pid in pids:
        assert _gone(pid), f"process {pid} outlived the run"


@pytest.fixture()
def session(module, monkeypatch, tmp_path, shipped_models):
    mod, _, _ = module
    sessions = []
    yield lambda delays=None: sessions.append(Session(mod, monkeypatch, tmp_path, delays)) or sessions[-1]
    for s in sessions:
        s.widget.cleanup()  # the scene's observers go with the widget


def test_input_volume_deleted_during_the_run(session):
    s = session([60])
    volume = s.volume("chest A")
    process = s.apply(volume)
    workdir = s.widget._handle.workdir
    child, worker = s.wait_started()
    started = time.monotonic()
    s.scene.RemoveNode(volume)  # the user deletes the input in the Data module
    assert time.monotonic() - started < 10  # stopped at once (not after the child's 60 s)
    assert s.widget._handle is None
    _assert_stopped(process, (child, worker))
    message = "Input volume 'chest A' was removed: segmentation cancelled, nothing was written"
    assert s.log[-1] == message and s.status == [message] and s.dialogs == []
    assert not workdir.exists()
    s.poll_until_idle()  # the timer ticking afterwards does nothing
    assert s.segmentation_nodes() == []
    assert s.widget.ui.cancelButton.enabled is False


def test_input_volume_deleted_with_the_real_predictor(session, jsrt_dir):
    """The real torch-free child (the shipped INT8 model's ONNX form) is stopped as soon as the input goes."""
    s = session()
    volume = sf.volume_from_file(s.scene, jsrt_dir / "images" / "JPCLN001.png", "JPCLN001")
    process = s.apply(volume)
    assert "scripts.deploy.predictor" in s.widget._handle.process.command
    time.sleep(0.5)
    assert process.poll() is None  # still loading onnxruntime / segmenting
    s.scene.RemoveNode(volume)
    _assert_stopped(process)
    assert s.status == ["Input volume 'JPCLN001' was removed: segmentation cancelled, nothing was written"]
    s.poll_until_idle()
    assert s.segmentation_nodes() == [] and s.dialogs == []


def test_result_of_a_run_whose_input_left_the_scene_is_discarded(tmp_path, monkeypatch, shipped_models):
    """Without the widget's observers (a script, or the child ending just before the deletion): ``finish`` finds the
    input gone and writes nothing."""
    s = SimpleNamespace(_tmp=tmp_path, children=[], _delays=[0])
    monkeypatch.setattr(bundle_process, "infer_command", lambda *a, **kw: Session._fake_command(s, *a, **kw))
    scene = sf.new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chest B")
    slicer.util.updateVolumeFromArray(volume, np.full((1, 64, 64), 100, np.uint8))
    logic = AdaQATSegmentationLogic(scene, BUNDLE)
    handle = logic.start(SegmentationRequest(volume))
    handle.process.wait(60, raise_errors=False)
    assert handle.process._process.returncode == 0 and list(handle.output_dir.glob("*_mask.nrrd"))
    scene.RemoveNode(volume)
    with pytest.raises(RunDiscarded, match="volume 'chest B' was removed from the scene during the run"):
        logic.finish(handle)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0 and not handle.workdir.exists()


@pytest.mark.parametrize("same_volume", [False, True], ids=["other_volume", "same_volume"])
def test_apply_again_during_a_run_replaces_it(session, same_volume):
    s = session([60, 0.5])
    first_volume, second_volume = s.volume("chest A"), s.volume("chest B")
    first = s.apply(first_volume)
    first_pids = s.wait_started()
    second = s.apply(first_volume if same_volume else second_volume)  # Apply again, maybe on another volume
    _assert_stopped(first, first_pids)
    assert "the previous run was cancelled and replaced by this one" in s.log
    s.poll_until_idle()
    assert second.returncode == 0 and s.dialogs == []
    target = first_volume if same_volume else second_volume
    (node,) = s.segmentation_nodes()  # exactly one result
    assert node.GetAttribute(segmentation_output.OUTPUT_ATTRIBUTE) == target.GetID()
    assert len(segmentation_output.own_segment_ids(node)) == 1
    if not same_volume:
        assert segmentation_output.find_output_node(s.scene, first_volume) is None
    assert f"done: segmentation '{target.GetName()} lungs (AdaQAT)'" in s.log
    # Apply stays available during a run (that is how a run is replaced); Cancel only while one runs
    assert s.widget.ui.applyButton.enabled is True and s.widget.ui.cancelButton.enabled is False


def test_scene_closed_during_the_run(session):
    s = session([60])
    volume = s.volume("chest A")
    process = s.apply(volume)
    pids = s.wait_started()
    workdir = s.widget._handle.workdir
    s.scene.Clear()  # File > Close Scene
    assert s.widget._handle is None
    _assert_stopped(process, pids)
    assert s.status == ["Scene closed: segmentation cancelled, nothing was written"] and s.dialogs == []
    assert not workdir.exists()
    s.poll_until_idle()
    assert s.segmentation_nodes() == []
    # the module keeps working in the new scene
    s._delays.append(0)
    s.apply(s.volume("chest C"))
    s.poll_until_idle()
    (node,) = s.segmentation_nodes()
    assert node.GetName() == "chest C lungs (AdaQAT)"


def test_output_node_deleted_during_the_run(session):
    s = session([0, 2])
    volume = s.volume("chest A")
    s.apply(volume)
    s.poll_until_idle()
    (old,) = s.segmentation_nodes()
    segments_before = old.GetSegmentation().GetNumberOfSegments()
    modified_before = old.GetSegmentation().GetMTime()
    s.apply(volume)  # Apply again ...
    s.wait_started()
    s.scene.RemoveNode(old)  # ... and the user deletes the previous result while it runs
    assert s.widget._handle is not None  # the input is still there: the run goes on
    s.poll_until_idle()
    assert s.dialogs == []
    (new,) = s.segmentation_nodes()
    assert new is not old and old.GetScene() is None
    assert old.GetSegmentation().GetNumberOfSegments() == segments_before  # nothing written into the deleted node
    assert old.GetSegmentation().GetMTime() == modified_before
    assert new.GetAttribute(segmentation_output.OUTPUT_ATTRIBUTE) == volume.GetID()
    assert len(segmentation_output.own_segment_ids(new)) == 1 and new.GetName() == "chest A lungs (AdaQAT)"


def test_module_closed_during_the_run_stops_it(session):
    """Reloading the module or quitting Slicer (the widget's cleanup) stops the child and its observers."""
    s = session([60])
    process = s.apply(s.volume("chest A"))
    pids = s.wait_started()
    s.widget.cleanup()
    _assert_stopped(process, pids)
    assert s.widget._handle is None and s.widget._scene_observers == []
    assert s.dialogs == [] and s.segmentation_nodes() == []


def test_cancel_kills_a_child_that_ignores_sigterm(tmp_path):
    """The grace time ends in SIGKILL of the whole group; the child is reaped."""
    process = bundle_process.BundleProcess(
        [sys.executable, "-c", ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                "print('ready', flush=True); time.sleep(120)")], tmp_path, dict(os.environ)).start()
    deadline = time.monotonic() + 30
    while not process.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    process.cancel(grace_s=0.5)
    assert time.monotonic() - started < 5
    _assert_stopped(process._process)
    assert process._process.returncode == -signal.SIGKILL
    with pytest.raises(bundle_process.BundleCancelled):
        process.finish()
    process.cancel()  # again: harmless
