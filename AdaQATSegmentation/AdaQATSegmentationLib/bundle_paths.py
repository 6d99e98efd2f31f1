"""Where the bundle and its models are: the module calls the bundle, it never carries its own engine.

Search order for the bundle folder: an explicit path (module setting), ``$ADAQAT_BUNDLE``, the
``monai_bundle/`` beside the module in a source checkout, then the installed ``adaqat_bundle`` package.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
INT8_MODEL = "models/model_int8.pt"
FP32_MODEL = "models/model.pt"
MODEL_SUFFIXES = (".pt", ".pth")
ROUTES = ("auto", "onnx", "torch")


class BundleNotFoundError(FileNotFoundError):
    """No bundle folder (with ``configs/inference.json`` and the engine ``scripts/``) could be found."""


def is_bundle(folder: str | Path) -> bool:
    """A folder is the AdaQAT bundle when it holds the inference config and the engine package."""
    folder = Path(folder)
    return (folder / "configs" / "inference.json").is_file() and (folder / "scripts" / "__init__.py").is_file()


def _installed_bundle() -> Path | None:
    spec = importlib.util.find_spec("adaqat_bundle")  # finds the package without importing the engine
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_bundle(explicit: str | Path | None = None) -> Path:
    """The bundle root folder; raises BundleNotFoundError naming the folder set, or the places searched."""
    if explicit:  # a folder the user set is used or refused, never silently replaced by another
        if not is_bundle(explicit):
            raise BundleNotFoundError(f"{explicit}: not the AdaQAT bundle folder (configs/inference.json and "
                                      "scripts/__init__.py expected); fix the module's Advanced setting or clear it")
        return Path(explicit).resolve()
    candidates: list[Path] = []
    if os.environ.get("ADAQAT_BUNDLE"):
        candidates.append(Path(os.environ["ADAQAT_BUNDLE"]))
    candidates.append(MODULE_DIR.parent / "monai_bundle")
    installed = _installed_bundle()
    if installed is not None:
        candidates.append(installed)
    for folder in candidates:
        if is_bundle(folder):
            return folder.resolve()
    raise BundleNotFoundError("the AdaQAT MONAI bundle was not found; searched: " + ", ".join(map(str, candidates)) +
                              ". Set its folder in the module's Advanced section or $ADAQAT_BUNDLE.")


@dataclass(frozen=True)
class ModelChoice:
    """A model the user can pick: the bundled INT8 or FP32 model, or a file of their own."""

    key: str  # "int8", "fp32" or "file"
    label: str
    path: Path


def bundled_models(bundle_root: str | Path) -> list[ModelChoice]:
    """The bundle's shipped models that are present (INT8 first: smaller and faster on the CPU)."""
    root = Path(bundle_root)
    choices = [ModelChoice("int8", "Bundled INT8 model (fast, CPU)", root / INT8_MODEL),
               ModelChoice("fp32", "Bundled FP32 model", root / FP32_MODEL)]
    return [c for c in choices if c.path.is_file()]


def resolve_model(choice: str, bundle_root: str | Path, user_file: str | Path | None = None) -> Path:
    """Path of the chosen model; a clear error when it is missing or not a model file.

    ``choice`` is "int8", "fp32" or "file". A user file may be a fine-tuned bundle checkpoint
    (``models/model.pt`` of a run, or an INT8 export) or an official SAM ``.pth``: the engine tells them
    apart by content, so only existence and suffix are checked here.
    """
    root = Path(bundle_root)
    if choice == "int8":
        path = root / INT8_MODEL
    elif choice == "fp32":
        path = root / FP32_MODEL
    elif choice == "file":
        if not user_file:
            raise FileNotFoundError("choose a model file (a fine-tuned bundle checkpoint or an official SAM .pth)")
        path = Path(user_file).expanduser()
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise ValueError(f"{path}: not a model file (expected {' or '.join(MODEL_SUFFIXES)})")
    else:
        raise ValueError(f"unknown model choice {choice!r}: int8, fp32 or file")
    if not path.is_file():
        hint = (" — train and install one with `adaqat pipeline ... --install-models`, or download it from "
                "the module's Advanced section" if choice != "file" else "")
        raise FileNotFoundError(f"{path}: model file not found{hint}")
    return path.resolve()


def has_onnx_form(model: str | Path) -> bool:
    """Both ONNX graphs of ``model`` lie beside it (``<stem>.encoder-<size>.onnx`` and ``.decoder-<size>.onnx``,
    as ``adaqat export-onnx`` writes them); whether they are current is the predictor's check, by hash."""
    model = Path(model)
    return all(any(model.parent.glob(f"{model.stem}.{part}-*.onnx")) for part in ("encoder", "decoder"))


def resolve_route(route: str, choice: str, model: str | Path) -> str:
    """Which engine runs: "onnx" (numpy + onnxruntime, no PyTorch) or "torch" (the bundle's inference config).

    "auto" takes the torch-free route for the bundled models that ship their ONNX form, and the torch route for
    a user's file (checkpoints of fine-tuning, official SAM weights), which has no ONNX form until exported.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}: one of {ROUTES}")
    if route == "auto":
        return "onnx" if choice != "file" and has_onnx_form(model) else "torch"
    if route == "onnx" and not has_onnx_form(model):
        raise FileNotFoundError(f"{model}: no ONNX form beside it; make it once with `adaqat export-onnx {model}` "
                                "or choose the PyTorch route")
    return route
