"""Python packages the bundle needs in Slicer's Python, checked and installed on the first Apply.

Two routes, two sets: the default, torch-free route (the shipped model's ONNX form) needs only onnxruntime
beside what Slicer ships (numpy, SimpleITK, pydicom, Pillow); the PyTorch route (a user's checkpoint,
fine-tuning) needs the whole engine. Nothing is installed at import: ``missing()`` only looks packages up
(``importlib.util.find_spec``, no import), and ``install_missing()`` asks first. torch and torchvision come
through the PyTorch extension (``PyTorchUtils``, which picks the build for the machine's GPU); the rest through
``slicer.util.pip_install``. Versions are the engine's pins (setup.py; a test keeps them equal).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Iterable

TORCH_REQUIREMENT = ">=2.4"


@dataclass(frozen=True)
class Requirement:
    """One package: the name it is imported by and what pip installs (None: Slicer ships it)."""

    module: str
    pip: str | None
    via_pytorch_extension: bool = False


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", None, via_pytorch_extension=True),
    Requirement("torchvision", None, via_pytorch_extension=True),
    Requirement("monai", "monai==1.6.1"),
    Requirement("segment_anything", "segment-anything==1.0"),
    Requirement("peft", "peft==0.21.2"),
    Requirement("ignite", "pytorch-ignite==0.5.5"),
    Requirement("nibabel", "nibabel==5.4.2"),
    Requirement("nrrd", "pynrrd==1.1.3"),
    Requirement("scipy", "scipy==1.17.1"),
    Requirement("skimage", "scikit-image==0.26.0"),
    Requirement("yaml", "PyYAML==6.0.4"),
    Requirement("tqdm", "tqdm==4.70.1"),
    # the fast CPU route of the image encoder (the engine falls back to eager PyTorch without them)
    Requirement("onnx", "onnx==1.23.2"),
    Requirement("onnxscript", "onnxscript==0.7.2"),
    Requirement("onnxruntime", "onnxruntime==1.32.0"),
    # Slicer ships these; a pinned reinstall could break Slicer itself, so they are only installed if absent.
    Requirement("numpy", "numpy"),
    Requirement("SimpleITK", "SimpleITK"),
    Requirement("pydicom", "pydicom"),
    Requirement("PIL", "pillow"),
)


# What the torch-free predictor (scripts.deploy) imports: onnxruntime, and Slicer's own numpy/SimpleITK/pydicom/PIL.
ONNX_REQUIREMENTS: tuple[Requirement, ...] = tuple(
    r for r in REQUIREMENTS if r.module in ("onnxruntime", "numpy", "SimpleITK", "pydicom", "PIL"))


def requirements_for(route: str) -> tuple[Requirement, ...]:
    """The packages one route needs: "onnx" (the default for the shipped model) or "torch"."""
    return ONNX_REQUIREMENTS if route == "onnx" else REQUIREMENTS


class DependencyError(RuntimeError):
    """Packages are missing and were not installed (declined, or the install failed)."""


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(requirements: Iterable[Requirement] = REQUIREMENTS) -> list[Requirement]:
    """The requirements whose module cannot be found in this Python (nothing is imported)."""
    return [r for r in requirements if not _present(r.module)]


def describe(requirements: Iterable[Requirement]) -> str:
    """One line for the confirmation dialog: what will be installed and how."""
    reqs = list(requirements)
    torch = [r.module for r in reqs if r.via_pytorch_extension]
    pip = [r.pip for r in reqs if not r.via_pytorch_extension and r.pip]
    parts = []
    if torch:
        parts.append(f"{', '.join(torch)} through the PyTorch extension (about 1-3 GB)")
    if pip:
        parts.append("with pip: " + ", ".join(pip))
    return "; ".join(parts)


def install_missing(confirm: Callable[[str], bool], pip_install: Callable[[str], None],
                    install_torch: Callable[[], bool], requirements: Iterable[Requirement] = REQUIREMENTS) -> list[str]:
    """Install what is missing after ``confirm(message)`` says yes; returns the modules installed.

    The installers are passed in (in Slicer: ``slicer.util.pip_install`` and PyTorchUtils), so this
    runs, and is tested, without the application. Declining raises DependencyError.
    """
    todo = missing(requirements)
    if not todo:
        return []
    message = ("AdaQAT Segmentation needs Python packages that are not installed yet:\n"
               f"{describe(todo)}.\nInstall them now? This can take several minutes.")
    if not confirm(message):
        raise DependencyError("required packages are not installed: " + ", ".join(r.module for r in todo))
    if any(r.via_pytorch_extension for r in todo) and not install_torch():
        raise DependencyError("PyTorch was not installed (install the PyTorch extension, then apply again)")
    pip_specs = [r.pip for r in todo if not r.via_pytorch_extension and r.pip]
    if pip_specs:
        pip_install(" ".join(pip_specs))
    importlib.invalidate_caches()
    still = missing(todo)
    if still:
        raise DependencyError("installation finished but these are still missing: " + ", ".join(r.module for r in still))
    return [r.module for r in todo]


def slicer_torch_installer() -> Callable[[], bool]:
    """PyTorchUtils' installer (only inside Slicer with the PyTorch extension)."""
    def install() -> bool:
        try:
            import PyTorchUtils  # the PyTorch extension's module
        except ImportError as exc:
            raise DependencyError("the PyTorch extension is not installed: add it with the Extensions Manager, "
                                  "restart Slicer and apply again") from exc
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if logic.torchInstalled():
            return True
        return logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is not None
    return install
