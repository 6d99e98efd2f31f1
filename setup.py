"""Installs the engine's dependencies and the ``adaqat`` command.

The code installed is the bundle's own ``monai_bundle/scripts`` (package ``adaqat_bundle.scripts``),
with the bundle configs as package data: one copy of every piece of logic, shared by the bundle,
the CLI, the Slicer module and the MONAI Label app.
"""

from setuptools import setup

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
    "nibabel==5.4.2",
    "pynrrd==1.1.3",
    "pillow==13.0.0",
    "scipy==1.17.1",
    "scikit-image==0.26.0",
    "numpy==2.4.6",
    "tensorboard==2.21.0",
    "tqdm==4.70.1",
    "PyYAML==6.0.4",
    "fire==0.7.1",
    # the fastest CPU inference route (scripts/ort_runtime.py); load_model falls back to eager without them
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
    packages=["adaqat_bundle", "adaqat_bundle.scripts"],
    package_dir={"adaqat_bundle": "monai_bundle", "adaqat_bundle.scripts": "monai_bundle/scripts"},
    package_data={"adaqat_bundle": ["configs/*.json", "configs/*.conf", "docs/*", "LICENSE", "large_files.yml"]},
    install_requires=INSTALL_REQUIRES,
    # slicer-core (+ its vtk) gives real MRML nodes for testing the Slicer module's logic without Slicer.
    extras_require={"test": ["pytest==9.2.0", "jsonschema", "slicer-core==5.13.31053.0", "vtk==9.6.2"],
                    # the PT2E INT8 route of `adaqat benchmark` (X86InductorQuantizer); does not pull another torch
                    "bench": ["torchao==0.18.0"],
                    # plots of `adaqat compare` (the engine itself draws nothing with matplotlib)
                    "study": ["matplotlib==3.11.2"]},
    entry_points={"console_scripts": ["adaqat=adaqat_bundle.scripts.cli:main"]},
)
