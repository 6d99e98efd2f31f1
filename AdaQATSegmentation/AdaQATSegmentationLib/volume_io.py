"""Volume node <-> image file: the bundle reads and writes files, the module holds MRML nodes.

The input volume is written with Slicer's own volume writer (a storage node), so its geometry reaches
the file exactly as Slicer would save it (RAS in the scene, LPS in the file). The engine writes the mask
in that file's geometry; it is read back with SimpleITK and checked against the input before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Slicer's scene is RAS, ITK/NRRD/NIfTI/DICOM files are LPS: the first two axes flip sign.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_GEOMETRY_TOLERANCE = 1e-3


class VolumeInputError(ValueError):
    """The chosen volume cannot be segmented as a chest X-ray (the message names it and says why)."""


def _node_label(node: Any) -> str:
    return f"volume '{node.GetName()}'" if node is not None else "no volume"


def check_radiograph_volume(volume_node: Any) -> tuple[int, int]:
    """Check that ``volume_node`` is a single-slice scalar volume; return its (rows, columns).

    Why: a CXR loads in Slicer as one slice (PNG, JPEG, DICOM CR/DX). A CT, an empty node or an RGB
    picture would reach the model as something it was never trained on, so they are refused here with a
    message the user can act on instead of failing deep inside the engine.
    """
    if volume_node is None:
        raise VolumeInputError("no input volume selected")
    name = _node_label(volume_node)
    if volume_node.IsA("vtkMRMLVectorVolumeNode"):
        raise VolumeInputError(
            f"{name} is a vector (RGB/colour) volume; convert it to a scalar volume first "
            "(module 'Vector to Scalar Volume'), then apply again")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise VolumeInputError(f"{name} is a {volume_node.GetClassName()}, not a scalar volume")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise VolumeInputError(f"{name} is empty: it has no image data")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise VolumeInputError(
            f"{name} has {components} components per pixel (RGB/vector); convert it to a scalar volume "
            "first (module 'Vector to Scalar Volume')")
    dims = image.GetDimensions()
    if dims[2] > 1:
        raise VolumeInputError(
            f"{name} is a 3-D volume with {dims[2]} slices; a single 2-D chest radiograph is expected")
    if min(dims[:2]) < 2:
        raise VolumeInputError(f"{name} has size {dims[0]}x{dims[1]}: not a 2-D image")
    return int(dims[1]), int(dims[0])


def lps_geometry(volume_node: Any) -> dict[str, np.ndarray]:
    """Origin, spacing and direction (3x3, columns = axes) of the node, in LPS as a file stores them."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    m = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.array(volume_node.GetSpacing(), dtype=float)
    direction = _RAS_TO_LPS @ (m[:3, :3] / spacing)
    return {"origin": _RAS_TO_LPS @ m[:3, 3], "spacing": spacing, "direction": direction}


INVERTED_GREY = "vtkMRMLColorTableNodeInvertedGrey"


def displays_inverted(volume_node: Any) -> bool:
    """True when the volume is shown with Slicer's inverted grey table (a MONOCHROME1 DICOM, where high
    values are dark): the model expects bone bright, as the engine makes it when it reads such a DICOM."""
    display = volume_node.GetDisplayNode()
    return display is not None and display.GetColorNodeID() == INVERTED_GREY


def write_volume(volume_node: Any, path: str | Path) -> Path:
    """Write the checked input volume to ``path`` (.nrrd or .nii.gz) with its geometry; returns the path.

    A volume displayed inverted (MONOCHROME1) is written with its values flipped, so the file looks like
    what the user sees; the node itself is left untouched.
    """
    import slicer

    check_radiograph_volume(volume_node)
    path = Path(path)
    source = volume_node
    if displays_inverted(volume_node):
        array = slicer.util.arrayFromVolume(volume_node)
        source = slicer.vtkMRMLScalarVolumeNode()
        source.SetName(volume_node.GetName())
        source.CopyOrientation(volume_node)
        slicer.util.updateVolumeFromArray(source, (array.max() - array + array.min()).astype(array.dtype))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(source) or not path.is_file():
        raise OSError(f"could not write {_node_label(volume_node)} to {path}")
    return path


def read_mask(path: str | Path, volume_node: Any) -> np.ndarray:
    """Read the engine's mask file as a (1, rows, columns) uint8 label array in the input's index order.

    The engine writes the mask in the input file's geometry; the size and geometry are checked here so a
    mismatch (a wrong file, a resampled mask) is an error naming the file, not a silently shifted overlay.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundle did not write the expected mask file")
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    expected = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    if array.size != int(np.prod(expected)):
        raise ValueError(f"{path}: mask of size {image.GetSize()} does not match "
                         f"{_node_label(volume_node)} of size {tuple(reversed(expected))}")
    if image.GetDimension() == 3:
        geometry = lps_geometry(volume_node)
        direction = np.array(image.GetDirection()).reshape(3, 3)
        if not (np.allclose(image.GetOrigin(), geometry["origin"], atol=_GEOMETRY_TOLERANCE)
                and np.allclose(image.GetSpacing(), geometry["spacing"], atol=_GEOMETRY_TOLERANCE)
                and np.allclose(direction, geometry["direction"], atol=_GEOMETRY_TOLERANCE)):
            raise ValueError(f"{path}: mask geometry (origin {image.GetOrigin()}, spacing {image.GetSpacing()}) "
                             f"differs from {_node_label(volume_node)}")
    return np.ascontiguousarray(array.reshape(expected)).astype(np.uint8)


def roi_to_box(roi_node: Any, volume_node: Any) -> tuple[float, float, float, float]:
    """Box prompt (x0, y0, x1, y1) in the volume's pixel columns/rows from a markups ROI node.

    The ROI's world bounds are mapped through the volume's RAS-to-IJK matrix (and its parent transform,
    if any) and clipped to the image; a ROI that misses the image is an error.
    """
    import slicer
    import vtk

    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    world_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(world_to_ijk)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        world_to_local = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, world_to_local)
        to_local = world_to_local.TransformPoint
    else:
        def to_local(p): return p
    corners = []
    for x in bounds[0:2]:
        for y in bounds[2:4]:
            for z in bounds[4:6]:
                local = to_local([x, y, z])
                corners.append(world_to_ijk.MultiplyPoint([*local, 1.0])[:2])
    ij = np.array(corners)
    rows, cols = check_radiograph_volume(volume_node)
    # voxel centres are at integer IJK: the pixel edges lie half a voxel out
    x0, y0 = np.clip(ij.min(axis=0) + 0.5, 0, [cols, rows])
    x1, y1 = np.clip(ij.max(axis=0) + 0.5, 0, [cols, rows])
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise VolumeInputError(f"ROI '{roi_node.GetName()}' does not overlap {_node_label(volume_node)}")
    return float(x0), float(y0), float(x1), float(y1)
