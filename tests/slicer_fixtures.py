"""Helpers for the Slicer module's tests: real MRML scenes and volume nodes from real image files.

``slicer`` here is the ``slicer-core`` wheel (real MRML, no application). Images are read with SimpleITK
and their LPS file geometry turned into Slicer's RAS, as Slicer's own loaders do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "AdaQATSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def new_scene():
    """A fresh real MRML scene, also set as ``slicer.mrmlScene`` (as in the application)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    return scene


def volume_from_sitk(scene, image, name: str):
    """Scalar volume node holding ``image`` (2-D or 3-D SimpleITK image) with its geometry in RAS."""
    import SimpleITK as sitk
    import slicer
    import vtk

    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # (W, H) -> (W, H, 1): one slice, geometry kept
    array = sitk.GetArrayFromImage(image)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    direction = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c] * image.GetSpacing()[c])
        matrix.SetElement(r, 3, (LPS_TO_RAS @ np.array(image.GetOrigin()))[r])
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def volume_from_file(scene, path: Path, name: str | None = None):
    """Volume node from a PNG/DICOM/NRRD file read with SimpleITK (slicer-core has no file readers)."""
    import SimpleITK as sitk

    return volume_from_sitk(scene, sitk.ReadImage(str(path)), name or Path(path).stem)


def read_reference_mask(path: Path) -> np.ndarray:
    """A 0/255 reference mask PNG as a (1, H, W) 0/1 array, the index order of the volume node."""
    import SimpleITK as sitk

    return (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0).astype(np.uint8)[None]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
