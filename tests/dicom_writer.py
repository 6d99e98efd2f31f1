"""Write small DICOM radiographs for tests (pydicom), as a CR/DX export from a PACS would look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def make_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "DX", **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.SeriesDescription = "anon", modality, "chest PA"
    ds.PixelSpacing = [0.5, 0.25]
    for key, value in extra.items():
        setattr(ds, key, value)
    if arr is not None:
        bits = 16 if arr.dtype == np.uint16 else 8
        ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=bits, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path
