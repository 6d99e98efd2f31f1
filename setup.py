"""Installs the engine's dependencies, the bundle and the tools behind the ``adaqat`` command.

Two packages: ``adaqat_bundle`` is the MONAI bundle folder (``monai_bundle/``: configs, docs and the
engine in ``scripts/``), installed as it is so the tools can find and run it; ``adaqat`` is the tools
(CLI, pipeline, report, study, sensitivity sweep, benchmark). The tools import the engine as
``scripts.*`` from the bundle folder, exactly as ``python -m monai.bundle run`` does; the bundle never
imports the tools.
"""

from setuptools import find_packages, setup

# Pinned to what the bundle's metadata declares (configs/metadata.json); torch is installed first,
# pinned, by the set-up scripts (see README), so pip does not fetch another multi-GB build.
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "monai==1.6.1",
    "segment-anything==1.0",
    "peft==0.21.2",
    "pytorch-ignite==0.5.5",
    "SimpleITK==2.5.7",
    "pydicom==3.0.2",
    # DICOM SEG output (monai_bundle/scripts/data/dicom_seg.py); 0.23+ needs pydicom 3 (the MONAI Label env pins 0.22.0)
    "highdicom==0.28.2",
    "nibabel==5.4.2",
    "pynrrd==1.1.3",
    "pillow==13.0.0",
    "scipy==1.17.1",
    # fits the quality score's calibration (adaqat/quality.py; inference applies it with numpy alone)
    "scikit-learn==1.9.1",
    "scikit-image==0.26.0",
    "numpy==2.4.6",
    "tensorboard==2.21.0",
    "tqdm==4.70.1",
    "PyYAML==6.0.4",
    "fire==0.7.1",
    # the fastest CPU inference route (monai_bundle/scripts/quantization/runtime_onnx.py); load_model falls back to eager without them
    "onnx==1.23.2",
    "onnxscript==0.7.2",
    "onnxruntime==1.32.0",
]

setup(
    name="adaqat",
    version="0.1.0",
    description="AdaLoRA-QAT: compact SAM lung-field segmentation of chest X-rays (MONAI bundle, CLI)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["adaqat_bundle", *(f"adaqat_bundle.{p}" for p in find_packages("monai_bundle")),
              *find_packages(include=["adaqat", "adaqat.*"])],
    package_dir={"adaqat_bundle": "monai_bundle"},
    package_data={"adaqat_bundle": ["configs/*.json", "configs/*.conf", "docs/*", "LICENSE", "large_files.yml"]},
    install_requires=INSTALL_REQUIRES,
    # slicer-core (+ its vtk) gives real MRML nodes for testing the Slicer module's logic without Slicer.
    extras_require={"test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "jsonschema", "slicer-core==5.13.31053.0", "vtk==9.6.2"],
                    # the PT2E INT8 route of `adaqat benchmark` (X86InductorQuantizer, adaqat/compiled_runtime.py);
                    # does not pull another torch
                    "bench": ["torchao==0.18.0"],
                    # plots of `adaqat compare` (the engine itself draws nothing with matplotlib)
                    "study": ["matplotlib==3.11.2"]},
    entry_points={"console_scripts": ["adaqat=adaqat.cli:main"]},
)
