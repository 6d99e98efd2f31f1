"""Checks that need the Slicer application: the widget builds from the .ui and the sample is registered."""

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class AdaQATSegmentationWidgetTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_widget_builds_with_apply_disabled_until_a_volume_is_chosen()
        self.test_sample_is_registered()

    def test_widget_builds_with_apply_disabled_until_a_volume_is_chosen(self):
        slicer.util.selectModule("AdaQATSegmentation")
        widget = slicer.modules.AdaQATSegmentationWidget
        self.assertEqual(widget.ui.modelComboBox.count, 3)
        self.assertFalse(widget.ui.applyButton.enabled)
        self.assertFalse(widget.ui.cancelButton.enabled)
        self.assertEqual(widget.ui.qualityLabel.text, "")  # the quality score appears after a run
        self.assertEqual(widget.ui.qualityThresholdSpinBox.specialValueText, "calibration's own")
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cxr")
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        self.assertTrue(widget.ui.applyButton.enabled)

    def test_sample_is_registered(self):
        import SampleData
        from AdaQATSegmentationLib import sample_data

        source = SampleData.SampleDataLogic().sourceForSampleName(sample_data.SAMPLE_NAME)
        self.assertIsNotNone(source)
