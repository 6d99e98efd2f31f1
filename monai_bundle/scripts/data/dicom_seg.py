"""A lung mask as a DICOM Segmentation (SEG) of the radiograph it was made from.

Why: a PACS or a DICOM viewer keeps a SEG beside its source image (same Study, a new Series, the source's
Study/Series/SOP Instance UIDs referenced), with the segment coded (SNOMED CT) rather than a grey-level image
that only looks like a mask. highdicom builds it; it accepts a single-frame source without a Frame of
Reference, which is what a CR (no Frame of Reference module) and most DX images are.

What the source lacks is handled as the standard allows, and said in ONE line (logged and returned):
- no Frame of Reference: the SEG has none either; its one frame is aligned with the source's pixel grid;
- a Frame of Reference but no patient position/orientation (a projection radiograph): the Frame of
  Reference UID is copied, no plane position or orientation is written (highdicom >= 0.23 does this itself;
  done here so highdicom 0.22, the one that runs with pydicom 2, writes the same);
- no PixelSpacing: pixel measures from ImagerPixelSpacing (spacing at the detector, not corrected for
  magnification), or none when that is missing too.
Pixel measures carry a nominal SliceThickness of 1 mm when the source has none (every CR/DX): readers,
highdicom's own included, want it beside PixelSpacing; this is not said in the line.
Works with highdicom 0.22 (pydicom 2, the MONAI Label environment) and 0.28 (pydicom 3). The file is written
atomically. Bad input raises :class:`~.cxr_io.CXRInputError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .cxr_io import CXRInputError, first_line

logger = logging.getLogger(__name__)

SEG_SERIES_DESCRIPTION = "AdaQAT lung segmentation"
SEGMENT_LABEL = "lung"
# DICOM CID 7150 "Anatomical Structure" as the current standard lists it (pydicom 3's codedict); pydicom 2's
# older table says 123037004. Fixed here so a SEG from either environment carries the same code.
CATEGORY_CODE = ("91723000", "SCT", "Anatomical Structure")
TYPE_CODE = ("39607008", "SCT", "Lung")  # CID 7151
NOMINAL_SLICE_THICKNESS = 1.0  # mm, when the source has none (type 1C beside PixelSpacing; a radiograph has none)
SEG_SERIES_NUMBER = 901  # a new series in the source's study; viewers sort series by number
# Patient and General Study attributes of type 2 that highdicom copies from the source.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
_METADATA = Path(__file__).resolve().parents[2] / "configs" / "metadata.json"


def _bundle_version() -> str:
    try:
        return str(json.loads(_METADATA.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def _source_view(source: Any) -> Any:
    """The source's elements without its pixels (highdicom reads only the header), to adjust freely."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for elem in source:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            view.add(elem)
    if hasattr(source, "file_meta"):
        view.file_meta = source.file_meta
    for kw in _TYPE2_COPIED:  # type 2 (may be empty, must be present) in the SEG, which copies them; often missing
        if kw not in view:
            setattr(view, kw, None)
    return view


def build_dicom_seg(mask: np.ndarray, source: Any, source_path: str | os.PathLike) -> tuple[Any, str | None]:
    """The SEG (a ``highdicom.seg.Segmentation``) of a binary (H, W) ``mask`` over the pydicom ``source``.

    Returns the SEG and the one-line note on what the source lacked (None when it lacked nothing).
    """
    ref = Path(source_path)
    try:
        import highdicom as hd
    except ImportError as exc:
        raise ImportError(f"{ref}: DICOM SEG output needs highdicom (pip install highdicom; 0.22.0 with pydicom < 3)"
                          ) from exc
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CXRInputError(f"{ref}: a DICOM SEG is written for a single-frame radiograph, not {frames} frames")
    shape = (int(source.get("Rows", 0)), int(source.get("Columns", 0)))
    if tuple(mask.shape) != shape:
        raise CXRInputError(f"mask of size {tuple(mask.shape)} does not match reference {ref} of size {shape}")

    view = _source_view(source)
    lacks: list[str] = []
    has_for = "FrameOfReferenceUID" in source
    patient_geometry = has_for and all(
        k in source for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
    if has_for and not patient_geometry:
        del view.FrameOfReferenceUID  # added back below: the frame stays aligned with the source's pixels
        for kw in ("ImagePositionPatient", "ImageOrientationPatient"):
            if kw in view:
                delattr(view, kw)
        lacks.append("Frame of Reference UID copied without plane position/orientation (the source lacks "
                     "ImagePositionPatient, ImageOrientationPatient or PixelSpacing)")
    elif not has_for:
        lacks.append("no Frame of Reference (the source has none): the frame is aligned with the source's pixel grid")
    # Readers (highdicom's own among them) want SliceThickness beside PixelSpacing; a radiograph has none.
    thickness = float(source.SliceThickness) if source.get("SliceThickness") else NOMINAL_SLICE_THICKNESS
    pixel_measures = None  # with patient geometry highdicom copies the source's
    if patient_geometry:
        if not source.get("SliceThickness"):
            view.SliceThickness = thickness
    else:
        spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
        if spacing:
            pixel_measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing],
                                                      slice_thickness=thickness)
        if "PixelSpacing" not in source:
            lacks.append("pixel spacing from ImagerPixelSpacing (no PixelSpacing: detector spacing, not corrected "
                         "for magnification)" if spacing else
                         "no pixel measures (the source has neither PixelSpacing nor ImagerPixelSpacing)")

    version = _bundle_version()
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=Code(*CATEGORY_CODE),
        segmented_property_type=Code(*TYPE_CODE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="AdaQAT lung segmentation", family=codes.cid7162.ArtificialIntelligence, version=version),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=[view],
            pixel_array=(mask != 0).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="AdaQAT",
            manufacturer_model_name="AdaQAT lung segmentation",
            software_versions=version,
            device_serial_number="none",
            series_description=SEG_SERIES_DESCRIPTION,
            pixel_measures=pixel_measures,
            omit_empty_frames=False,  # an empty mask (no lungs found) still gives a SEG with its one frame
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CXRInputError(f"{ref}: cannot build a DICOM SEG from this source ({first_line(exc)})") from exc
    if has_for and not patient_geometry:
        seg.FrameOfReferenceUID = source.FrameOfReferenceUID
        seg.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    note = f"{ref}: DICOM SEG written with " + "; ".join(lacks) if lacks else None
    return seg, note


def write_dicom_seg(mask: np.ndarray, reference_path: str | os.PathLike,
                    out_path: str | os.PathLike) -> tuple[Path, str | None]:
    """Write the SEG of ``mask`` over the DICOM ``reference_path`` to ``out_path`` (atomically).

    Returns the path and the one-line note on what the source lacked (also logged as a warning), or None.
    """
    import pydicom

    ref, out = Path(reference_path), Path(out_path)
    try:
        source = pydicom.dcmread(ref, stop_before_pixels=True)
    except Exception as exc:
        raise CXRInputError(f"{ref}: cannot read reference DICOM ({first_line(exc)})") from exc
    seg, note = build_dicom_seg(mask, source, ref)
    with atomic_path(out) as tmp:
        if int(pydicom.__version__.split(".")[0]) >= 3:
            seg.save_as(tmp, enforce_file_format=True)
        else:
            seg.save_as(tmp, write_like_original=False)
    if note:
        logger.warning("%s", note)
    return out, note


__all__ = ["CATEGORY_CODE", "SEGMENT_LABEL", "SEG_SERIES_DESCRIPTION", "TYPE_CODE", "build_dicom_seg",
           "write_dicom_seg"]
