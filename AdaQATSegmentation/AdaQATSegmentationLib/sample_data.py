"""The sample chest X-ray offered in Slicer's Sample Data module: one CC BY image of the committed set.

From a source checkout the file is loaded from ``sample_data/`` beside the module (no network); an
installed extension fetches the same file from the project repository. The SHA256 makes both the same.
"""

from __future__ import annotations

from pathlib import Path

from .bundle_paths import MODULE_DIR

SAMPLE_NAME = "AdaQATChestXray"
CATEGORY = "AdaQAT"
RELATIVE_PATH = "sample_data/cxr_ccby_512/images/0a7faa2a.png"
SHA256 = "1abe4e9c3635736a42186e43a7010313d67f7e803b48b0a8eb11ee387c4e4af6"
REMOTE_URL = "https://raw.githubusercontent.com/adaqat/adaqat-cxr/main/" + RELATIVE_PATH
ATTRIBUTION = ("COVID-19 image data collection (Cohen et al.), Hannover Medical School, CC BY 3.0, "
               "doi:10.6084/m9.figshare.12275009")


def local_sample() -> Path | None:
    """The sample in a source checkout (repo root = the module folder's parent), if present."""
    path = MODULE_DIR.parent / RELATIVE_PATH
    return path if path.is_file() else None


def sample_source() -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``."""
    local = local_sample()
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": local.as_uri() if local is not None else REMOTE_URL,
        "fileNames": "AdaQATChestXray.png",
        "nodeNames": SAMPLE_NAME,
        "checksums": f"SHA256:{SHA256}",
        "thumbnailFileName": str(MODULE_DIR / "Resources" / "Icons" / "AdaQATSegmentation.png"),
        # no loadFileTypes: the .png suffix picks the volume reader in every Slicer >= 5.10
    }
