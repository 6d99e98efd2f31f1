"""The bundle's metadata.json is valid against the model-zoo schema, offline; large_files.yml is well formed."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
META_FILE = BUNDLE / "configs" / "metadata.json"
LARGE_FILES = BUNDLE / "large_files.yml"
SCHEMA_FILE = REPO / "scripts" / "resources" / "meta_schema_20240725.json"
# md5 of the verbatim schema copy (see scripts/resources/README.md)
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads(META_FILE.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any attempt to open a network connection or download."""

    def _refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr("urllib.request.urlopen", _refuse)
    monkeypatch.setattr("urllib.request.urlretrieve", _refuse)


def test_verify_metadata_offline(no_network, monkeypatch):
    import monai.apps.utils
    import monai.bundle.scripts as bundle_scripts
    from monai.bundle import verify_metadata

    real_download = monai.apps.utils.download_url
    calls = []

    def _guarded_download(url, filepath="", hash_val=None, hash_type="md5", **kwargs):
        # verify_metadata always calls download_url; with the schema already present it must only
        # check the hash and return, never fetch
        assert Path(filepath).exists(), f"schema would be downloaded from {url}"
        calls.append(url)
        return real_download(url=url, filepath=filepath, hash_val=hash_val, hash_type=hash_type, **kwargs)

    monkeypatch.setattr(bundle_scripts, "download_url", _guarded_download)
    verify_metadata(meta_file=str(META_FILE), filepath=str(SCHEMA_FILE), hash_val=SCHEMA_MD5, hash_type="md5")
    assert len(calls) == 1


def test_schema_copy_intact_and_validates(metadata, schema):
    from monai.apps.utils import check_hash

    assert check_hash(str(SCHEMA_FILE), SCHEMA_MD5, "md5")
    assert metadata["schema"].endswith("/" + SCHEMA_FILE.name)
    jsonschema.validate(instance=metadata, schema=schema)
    # the schema does reject a broken file (guards against a vacuous schema)
    broken = {k: v for k, v in metadata.items() if k != "network_data_format"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(instance=broken, schema=schema)


def test_metadata_content(metadata):
    assert metadata["version"] in metadata["changelog"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata["version"])
    fmt = metadata["network_data_format"]
    image = fmt["inputs"]["image"]
    pred = fmt["outputs"]["pred"]
    # MONAI Label takes the dimension from len(spatial_shape) and the label names from channel_def
    assert len(image["spatial_shape"]) == 2
    assert len(pred["spatial_shape"]) == 2
    assert image["num_channels"] == 1 and image["modality"] == "XR"
    assert pred["num_channels"] == 1
    assert pred["channel_def"] == {"0": "lung"}
    assert fmt["post_processed_outputs"]["pred"]["channel_def"] == {"0": "lung"}
    intended = metadata["intended_use"].lower()
    assert "research" in intended
    assert re.search(r"not (intended )?for clinical diagnosis", intended)
    for pkg in ("segment-anything", "peft", "pytorch-ignite", "scikit-image"):
        assert pkg in metadata["required_packages_version"]


def test_metadata_versions_match_environment(metadata):
    from importlib.metadata import version

    import monai
    import numpy
    import torch

    assert metadata["monai_version"] == monai.__version__.split("+")[0]
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == numpy.__version__
    for pkg, ver in metadata["required_packages_version"].items():
        assert version(pkg) == ver, pkg


def test_large_files(no_network):
    data = yaml.safe_load(LARGE_FILES.read_text())
    entries = data["large_files"]
    by_path = {e["path"]: e for e in entries}
    assert {"models/foundation.pt", "models/model.pt", "models/model_int8.pt"} <= set(by_path)
    assert len([p for p in by_path if p.endswith(".onnx")]) == 2
    total = 0
    for e in entries:  # what the bundle ships, each with the sha256 of the committed bytes
        assert set(e) == {"path", "url", "hash_val", "hash_type"}, e
        assert e["url"].startswith("https://") and e["url"].endswith("/" + Path(e["path"]).name)
        assert e["hash_type"] == "sha256" and re.fullmatch(r"[0-9a-f]{64}", e["hash_val"])
        shipped = BUNDLE / e["path"]
        assert hashlib.sha256(shipped.read_bytes()).hexdigest() == e["hash_val"], e["path"]
        total += shipped.stat().st_size
    assert total <= 40e6  # the project's budget for shipped weights

    # monai's own config reader (used by the zoo's download_large_files) reads it the same way
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(LARGE_FILES))
    assert [e["path"] for e in parser.get()["large_files"]] == [e["path"] for e in entries]
