"""Import-test of the Slicer module file where no Slicer application exists.

The real ``slicer`` here is the slicer-core wheel (MRML, no application): only what the module file needs
at import and in its logic is stubbed — ``qt``, ``slicer.ScriptedLoadableModule``, ``slicer.app`` and
``SampleData``. The widget (Qt) is left to the ScriptedLoadableModuleTest in a real Slicer.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest

import numpy as np
import pytest
import slicer_fixtures as sf
from conftest import optional_module

slicer = optional_module("slicer", "the slicer-core wheel (test extra) gives real MRML")


class _Base:
    def __init__(self, parent=None) -> None:
        self.parent = parent


class _FakeApp:
    def __init__(self) -> None:
        self.connections: list[tuple[str, object]] = []

    def connect(self, signal: str, slot) -> None:
        self.connections.append((signal, slot))


@pytest.fixture()
def module(monkeypatch):
    """The module file imported with the minimal stubs; returns (module, fake app, registered samples)."""
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (_Base,), {})
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (_Base,), {})
    slm.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (_Base,), {})
    slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,),
                                          {"delayDisplay": lambda self, message, msec=0: None})
    registered: list[dict] = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = type("SampleDataLogic", (), {
        "registerCustomSampleDataSource": staticmethod(lambda **kwargs: registered.append(kwargs))})
    app = _FakeApp()
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    spec = importlib.util.spec_from_file_location("AdaQATSegmentation", sf.MODULE_DIR / "AdaQATSegmentation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, app, registered


def test_module_describes_itself_and_registers_the_sample_on_startup(module):
    mod, app, registered = module
    parent = types.SimpleNamespace()
    mod.AdaQATSegmentation(parent)
    assert parent.title == "AdaQAT Lung Segmentation" and parent.categories == ["Segmentation"]
    assert "not for diagnosis" in parent.helpText and "CC BY" in parent.acknowledgementText
    assert app.connections == [("startupCompleted()", mod.registerSampleData)]
    assert registered == []  # nothing happens at import or construction
    mod.registerSampleData()
    (source,) = registered
    assert source["sampleName"] == "AdaQATChestXray" and source["uris"].startswith("file://")
    assert source["uris"].endswith("sample_data/cxr_ccby_512/images/0a7faa2a.png")


def test_module_logic_refuses_a_3d_volume_of_the_application_scene(module):
    mod, _, _ = module
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(volume, np.zeros((4, 32, 32), np.int16))
    with pytest.raises(mod.VolumeInputError, match="'CT' is a 3-D volume with 4 slices"):
        mod.AdaQATSegmentationModuleLogic().start(mod.SegmentationRequest(volume_node=volume))


def test_scripted_test_case_runs_its_bad_input_check_here(module):
    mod, _, _ = module
    case = mod.AdaQATSegmentationTest("test_rejects_3d_volume")
    assert isinstance(case, sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleTest)
    result = unittest.TestResult()
    case.run(result)
    assert result.wasSuccessful(), result.errors + result.failures
    assert callable(getattr(case, "runTest")) and callable(getattr(case, "test_segments_sample"))
