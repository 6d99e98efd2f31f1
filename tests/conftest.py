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
