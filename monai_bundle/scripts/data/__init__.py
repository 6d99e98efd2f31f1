"""Data: read/write radiographs and masks in any format, datalists and splits, transforms, input screening.

May import: ``scripts.atomic``, numpy, SimpleITK, pydicom, highdicom (DICOM SEG, lazily), nibabel, PIL, MONAI
transforms; nothing else of the engine.
"""
