"""Shared fixtures: the bundle root on sys.path (as `monai.bundle run` does) and the real data folders."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO / "monai_bundle"
SHARED_DATA = REPO.parent / "shared" / "data"
JSRT_DIR = SHARED_DATA / "jsrt_scr_224"
SAMPLE_DIR = REPO / "sample_data" / "cxr_ccby_512"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


def optional_module(name: str, reason: str) -> ModuleType:
    """An optional part (slicer-core, onnxruntime...): skipped where it is not installed, except in CI, where
    ``ADAQAT_REQUIRE_OPTIONAL`` (set by .ci/run) makes its absence a failure instead of a silent skip."""
    if os.environ.get("ADAQAT_REQUIRE_OPTIONAL"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)


@pytest.fixture(scope="session")
def jsrt_dir() -> Path:
    if not (JSRT_DIR / "manifest.csv").exists():
        pytest.fail(f"real JSRT data expected at {JSRT_DIR} (../shared/data beside the repo)")
    return JSRT_DIR


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


SHIPPED_MODELS = {"foundation": "foundation.pt", "fp32": "model.pt", "int8": "model_int8.pt"}


@pytest.fixture(scope="session")
def shipped_models() -> dict[str, Path]:
    """The trained models the bundle ships (``monai_bundle/models``, listed in ``large_files.yml``): the callers'
    tests use what a fresh clone has. Missing files fail, they do not skip: a clone without them is broken."""
    models = REPO / "monai_bundle" / "models"
    paths = {key: models / name for key, name in SHIPPED_MODELS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.fail("shipped model files missing (scripts/train_default_model.py --install makes them): " + ", ".join(missing))
    return paths


@pytest.fixture(scope="session")
def stage1_checkpoint(shipped_models, jsrt_dir, tmp_path_factory) -> Path:
    """A real stage-1 training checkpoint (AdaLoRA adapters, optimiser state): one short epoch from the shipped
    foundation on JSRT training images, for the tests of stage 2. Built once per session (well under a minute)."""
    from adaqat.pipeline import run_stage

    out = tmp_path_factory.mktemp("stage1")
    run_stage(["train"], {"dataset_dir": str(jsrt_dir), "split#by": "image", "limit": 24, "batch_size": 8,
                          "num_workers": 0, "num_epochs": 1, "sam_checkpoint": str(shipped_models["foundation"]),
                          "run_dir": str(out), "export_path": str(out / "model_fp32.pt")}, out / "model_fp32.pt")
    return out / "model.pt"
