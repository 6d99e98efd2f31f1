"""The tools around the bundle: the ``adaqat`` command line, the pipeline and its report, the method
comparison, the sensitivity sweep and the CPU benchmark.

The zoo bundle (``monai_bundle/``) never imports this package. These tools import the engine as
``scripts.*`` from the bundle folder, which importing ``adaqat`` puts first on ``sys.path`` (as
``python -m monai.bundle run`` does), so every engine class exists once in memory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def _find_bundle() -> Path:
    """``$ADAQAT_BUNDLE``, else ``monai_bundle/`` beside this package (a checkout), else the installed ``adaqat_bundle``."""
    if os.environ.get("ADAQAT_BUNDLE"):
        return Path(os.environ["ADAQAT_BUNDLE"]).resolve()
    beside = Path(__file__).resolve().parents[1] / "monai_bundle"
    if (beside / "configs").is_dir():
        return beside
    spec = importlib.util.find_spec("adaqat_bundle")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the AdaQAT bundle was not found: set ADAQAT_BUNDLE to the bundle folder")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


BUNDLE_ROOT = _find_bundle()
CONFIG_DIR = BUNDLE_ROOT / "configs"
REPO_ROOT = BUNDLE_ROOT.parent
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
