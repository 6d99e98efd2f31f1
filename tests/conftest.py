"""Shared fixtures: the bundle root on sys.path (as `monai.bundle run` does) and the real data folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO / "monai_bundle"
SHARED_DATA = REPO.parent / "shared" / "data"
JSRT_DIR = SHARED_DATA / "jsrt_scr_224"
SAMPLE_DIR = REPO / "sample_data" / "cxr_ccby_512"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


@pytest.fixture(scope="session")
def jsrt_dir() -> Path:
    if not (JSRT_DIR / "manifest.csv").exists():
        pytest.fail(f"real JSRT data expected at {JSRT_DIR} (../shared/data beside the repo)")
    return JSRT_DIR


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def jsrt_models(jsrt_dir, tmp_path_factory) -> dict[str, Path]:
    """A small SAM that really segments JSRT lungs (val Dice ~0.9), as FP32 and INT8 models.

    For tests of the callers (Slicer logic, MONAI Label app) that check a Dice against the reference:
    stage 0 for 4 epochs on the JSRT training split (by image), then one epoch each of stages 1 and 2.
    About two minutes on 2 cores; built once per test session.
    """
    from adaqat.pipeline import PipelineSettings, run_stages

    out = tmp_path_factory.mktemp("jsrt_models")
    run_stages(PipelineSettings(data=str(jsrt_dir), out=str(out), epochs=(4, 1, 1), split_by="image",
                                batch_size=8, extra={"num_workers": 0}))
    return {"fp32": out / "models" / "model.pt", "int8": out / "models" / "model_int8.pt",
            "foundation": out / "models" / "foundation.pt", "out": out}
