"""Run the bundle's configs from Python: the CLI and the pipeline go through here, never around it.

Why: the configs are the program's wiring (as in the model zoo); callers only choose config files
and overrides, exactly what ``python -m monai.bundle run`` would be given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import BUNDLE_ROOT, CONFIG_DIR


def config_file(name: str) -> str:
    """Path of a bundle config by short name (``train``, ``train_qat``, ``evaluate``, ``paper``...) or a path."""
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.exists():
        return str(candidate)
    path = CONFIG_DIR / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"bundle config {name!r} not found at {path}")
    return str(path)


def load_workflow(configs: Sequence[str], overrides: Mapping[str, Any] | None = None, workflow_type: str = "train",
                  bundle_root: str | os.PathLike | None = None) -> Any:
    """Merge ``configs`` (in order), apply ``overrides`` (``"a#b"`` ids allowed) and return the initialized workflow."""
    from monai.bundle import ConfigWorkflow

    root = str(Path(bundle_root or BUNDLE_ROOT).resolve())
    workflow = ConfigWorkflow(
        config_file=[config_file(c) for c in configs],
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=root,
        **dict(overrides or {}),
    )
    workflow.initialize()
    return workflow


def run_bundle(configs: Sequence[str], overrides: Mapping[str, Any] | None = None, workflow_type: str = "train",
               bundle_root: str | os.PathLike | None = None) -> Any:
    """Merge ``configs`` (in order), apply ``overrides`` (``"a#b"`` ids allowed), run, and return the workflow."""
    workflow = load_workflow(configs, overrides, workflow_type, bundle_root)
    try:
        workflow.run()
    finally:
        workflow.finalize()
    logging.getLogger("adaqat").debug("ran %s with %s", configs, overrides)
    return workflow


_CONFIG_WRAPPERS = ("Failed to evaluate", "Failed to instantiate")


def root_cause(exc: BaseException) -> BaseException:
    """The error a user should read: MONAI wraps errors raised inside configs in "Failed to evaluate/instantiate".

    Only those wrappers are peeled off; our own errors (which name the file and the problem) are kept even when
    they chain a library's lower-level exception (e.g. torch's weights_only refusal, which names no file).
    """
    while exc.__cause__ is not None and str(exc).startswith(_CONFIG_WRAPPERS):
        exc = exc.__cause__
    return exc


__all__ = ["BUNDLE_ROOT", "CONFIG_DIR", "config_file", "load_workflow", "root_cause", "run_bundle"]
