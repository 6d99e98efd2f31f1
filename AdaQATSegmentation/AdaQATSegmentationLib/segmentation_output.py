"""The module's output: one segmentation node per input volume, in the input's geometry.

Only what this module made is ever replaced: the node and its segments carry an attribute/tag, so a
second Apply swaps our lung segments and leaves every segment the user added (or another tool made)
in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

OUTPUT_ATTRIBUTE = "AdaQATSegmentation.SourceVolumeID"  # on the node: which volume it segments
SEGMENT_TAG = "AdaQATSegmentation.Output"  # on each segment we wrote
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
# SNOMED CT codes and the display colour that Slicer's General Anatomy terminology gives the lung.
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
LUNG = ("SCT", "39607008", "Lung")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")
LUNG_COLOR = (197 / 255, 165 / 255, 145 / 255)
RIGHT_LUNG_COLOR = (197 / 255, 165 / 255, 145 / 255)
LEFT_LUNG_COLOR = (177 / 255, 122 / 255, 101 / 255)


@dataclass(frozen=True)
class SegmentSpec:
    """Name, colour and terminology of one label value of the engine's mask."""

    label: int
    name: str
    color: tuple[float, float, float]
    modifier: tuple[str, str, str] | None = None


def segment_specs(labels: Sequence[int]) -> list[SegmentSpec]:
    """One label -> "lung"; two -> "right lung" (lower value) and "left lung" (the SCR/JSRT order)."""
    labels = sorted(int(v) for v in labels if v)
    if len(labels) == 1:
        return [SegmentSpec(labels[0], "lung", LUNG_COLOR)]
    if len(labels) == 2:
        return [SegmentSpec(labels[0], "right lung", RIGHT_LUNG_COLOR, RIGHT),
                SegmentSpec(labels[1], "left lung", LEFT_LUNG_COLOR, LEFT)]
    raise ValueError(f"the model gave {len(labels)} labels {labels}; one (lung) or two (right/left lung) expected")


def _code(cls: Any, code: tuple[str, str, str], color: tuple[float, float, float] | None = None) -> Any:
    obj = cls()
    obj.SetCodingSchemeDesignator(code[0])
    obj.SetCodeValue(code[1])
    obj.SetCodeMeaning(code[2])
    if color is not None and hasattr(obj, "SetRecommendedDisplayRGBValue"):
        obj.SetRecommendedDisplayRGBValue(*(int(round(c * 255)) for c in color))
    return obj


def terminology_string(spec: SegmentSpec) -> str:
    """Slicer's serialized terminology entry for the segment (category, type, modifier)."""
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    # Slicer 5.8 renamed "anatomic" to "region" context; older releases only have the first name
    set_region_context = getattr(entry, "SetRegionContextName", None) or entry.SetAnatomicContextName
    set_region_context(ANATOMIC_CONTEXT)
    entry.GetCategoryObject().Copy(_code(slicer.vtkSlicerTerminologyCategory, ANATOMICAL_STRUCTURE))
    entry.GetTypeObject().Copy(_code(slicer.vtkSlicerTerminologyType, LUNG, spec.color))
    if spec.modifier is not None:
        entry.GetTypeModifierObject().Copy(_code(slicer.vtkSlicerTerminologyType, spec.modifier, spec.color))
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def find_output_node(scene: Any, volume_node: Any) -> Any | None:
    """The segmentation node this module made earlier for ``volume_node``, if it is still in the scene."""
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(OUTPUT_ATTRIBUTE) == volume_node.GetID():
            return node
    return None


def own_segment_ids(segmentation_node: Any) -> list[str]:
    """IDs of the segments this module wrote (tagged), leaving the user's segments out."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return [sid for sid in ids if segmentation.GetSegment(sid).HasTag(SEGMENT_TAG)]


def _register_converters() -> None:
    """Labelmap <-> surface rules; the Slicer application registers them, plain slicer-core does not."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in names:
            factory.RegisterConverterRule(rule)


def write_output(scene: Any, volume_node: Any, labels: np.ndarray, node_name: str | None = None) -> Any:
    """Put the label array (K, J, I of the input) into the module's segmentation node; returns the node.

    A node made earlier for this volume is reused: its tagged segments are replaced, the rest are kept.
    The node gets the input's reference geometry and parent transform, so it overlays the image exactly.
    """
    import slicer

    _register_converters()
    values = [int(v) for v in np.unique(labels) if v]
    specs = segment_specs(values) if values else []
    node = find_output_node(scene, volume_node)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                       node_name or f"{volume_node.GetName()} lungs (AdaQAT)")
        node.CreateDefaultDisplayNodes()
        node.SetAttribute(OUTPUT_ATTRIBUTE, volume_node.GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation = node.GetSegmentation()
    for sid in own_segment_ids(node):
        segmentation.RemoveSegment(sid)
    if not specs:
        return node
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__adaqat_temp__")
    try:
        labelmap.CopyOrientation(volume_node)
        for spec in specs:
            slicer.util.updateVolumeFromArray(labelmap, (labels == spec.label).astype(np.uint8))
            image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap)
            sid = segmentation.AddEmptySegment("", spec.name, spec.color)
            segment = segmentation.GetSegment(sid)
            segment.SetTag(SEGMENT_TAG, "1")
            segment.SetTerminology(terminology_string(spec))
            if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    image, node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
                raise RuntimeError(f"could not store segment '{spec.name}' in '{node.GetName()}'")
    finally:
        scene.RemoveNode(labelmap)
    return node


def segment_array(scene: Any, segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """The segment as a (K, J, I) 0/1 array on the volume's grid, exported through Slicer's own logic."""
    import slicer
    import vtk

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__adaqat_export__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node):
            raise RuntimeError(f"could not export segment {segment_id} of '{segmentation_node.GetName()}'")
        return (slicer.util.arrayFromVolume(labelmap) > 0).astype(np.uint8)
    finally:
        scene.RemoveNode(labelmap)
