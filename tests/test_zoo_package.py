"""The model-zoo package (scripts/package_bundle.py): layout, checks, and that the zip is self-contained.

Self-contained means: unzipped in a fresh virtual environment holding only the metadata's
``required_packages_version`` (plus monai, torch and the declared numpy), ``python -m monai.bundle run``
from outside the bundle folder runs inference, evaluation and a one-epoch training. That environment
(.venv-bundle-check, ignored by git) is reused while its stamp matches the metadata's pins.
Downloads go through ``python -m monai.bundle download`` from a ``file://`` URL and from a folder in
the GitHub-release layout served on loopback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHECK_VENV = REPO / ".venv-bundle-check"
NAME = "adaqat_cxr_lung"


def _load_packager():
    spec = importlib.util.spec_from_file_location("adaqat_package_bundle", REPO / "scripts" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


packager = _load_packager()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads((REPO / "monai_bundle" / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def package_zip(shipped_models, tmp_path_factory) -> Path:
    """The zip of the bundle as it ships: its own trained models, foundation and ONNX form included."""
    return packager.package(shipped_models["int8"].parent, tmp_path_factory.mktemp("dist"))


def _fake_models(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in packager.WEIGHTS:
        (folder / name).write_bytes(b"weights")
    return folder


def test_version_missing_from_changelog_is_refused(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "9.9.9"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(packager.PackageError, match="9.9.9"):
        packager.package(_fake_models(tmp_path / "models"), tmp_path / "out", bundle=bundle, checks=False)
    assert not list(tmp_path.rglob("*.zip"))


def test_a_module_no_config_reaches_is_refused(tmp_path):
    """Tools (CLI, study, benchmark...) live in the adaqat package; a stray module in scripts/ must not ship."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("runs", "__pycache__", "models"))
    packager.check_engine_reached(bundle)  # the real engine: every module is reached
    (bundle / "scripts" / "evaluation" / "study_plots.py").write_text("import matplotlib\n")
    with pytest.raises(packager.PackageError, match=r"scripts/evaluation/study_plots\.py"):
        packager.package(_fake_models(tmp_path / "models"), tmp_path / "out", bundle=bundle, checks=False)
    assert not list(tmp_path.rglob("*.zip"))
    # reached through a lazy import inside a function of a reached module: shipped
    (bundle / "scripts" / "evaluation" / "metrics.py").write_text(
        (bundle / "scripts" / "evaluation" / "metrics.py").read_text() + "\n\ndef _plots():\n    from . import study_plots\n")
    packager.check_engine_reached(bundle)


def test_missing_weights_are_refused(tmp_path):
    models = _fake_models(tmp_path / "models")
    (models / "model_int8.pt").unlink()
    with pytest.raises(packager.PackageError, match="model_int8.pt"):
        packager.package(models, tmp_path / "out", checks=False)


def test_stale_weights_in_large_files_are_caught(tmp_path):
    """check_large_files compares the sha256 listed with the bytes shipped."""
    staging = tmp_path / "staging"
    packager.stage_bundle(packager.BUNDLE, _fake_models(tmp_path / "models"), staging, NAME, packager.DEFAULT_URL)
    packager.check_large_files(staging / NAME)
    (staging / NAME / "models" / "model.pt").write_bytes(b"other weights")
    with pytest.raises(packager.PackageError, match="models/model.pt"):
        packager.check_large_files(staging / NAME)


@pytest.mark.e2e
def test_package_layout(package_zip, metadata):
    assert package_zip.name == f"{NAME}_v{metadata['version']}.zip"
    with zipfile.ZipFile(package_zip) as zf:
        names = zf.namelist()
        assert all(n.startswith(f"{NAME}/") for n in names)
        for required in packager.REQUIRED_FILES + ("models/model.pt", "models/model_int8.pt"):
            assert f"{NAME}/{required}" in names
        assert not [n for n in names if "__pycache__" in n or "/runs/" in n or n.endswith(".pyc")]
        shipped_code = {n.removeprefix(f"{NAME}/") for n in names if n.endswith(".py")}
        reached = {str(p.relative_to(REPO / "monai_bundle")) for p in packager.reached_modules(REPO / "monai_bundle")}
        assert shipped_code == reached  # only what the configs import
        assert not [n for n in shipped_code if n.split("/")[-1] in ("cli.py", "study.py", "benchmark.py", "perf.py")]
        shipped_meta = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        assert shipped_meta["version"] in shipped_meta["changelog"]
        assert shipped_meta["required_packages_version"]["fire"]  # `python -m monai.bundle` needs it
        entries = {e["path"]: e for e in yaml.safe_load(zf.read(f"{NAME}/large_files.yml"))["large_files"]}
        weights = sorted(n.removeprefix(f"{NAME}/") for n in names if n.startswith(f"{NAME}/models/"))
        # the shipped set: foundation, FP32, INT8 and the INT8 model's two ONNX graphs
        assert [w for w in weights if w.endswith(".pt")] == ["models/foundation.pt", "models/model.pt", "models/model_int8.pt"]
        assert len([w for w in weights if w.endswith(".onnx")]) == 2
        for weight in weights:
            assert entries[weight]["hash_type"] == "sha256"
            assert entries[weight]["hash_val"] == hashlib.sha256(zf.read(f"{NAME}/{weight}")).hexdigest()
            assert entries[weight]["url"].endswith(f"/v{metadata['version']}/{Path(weight).name}")


def _check_venv(metadata: dict) -> Path:
    """A venv with torch, monai, numpy and the metadata's required packages only (reused when the stamp matches)."""
    pins = [f"monai=={metadata['monai_version']}", f"numpy=={metadata['numpy_version']}"]
    pins += [f"{pkg}=={ver}" for pkg, ver in sorted(metadata["required_packages_version"].items())]
    torch_pins = [f"torch=={metadata['pytorch_version']}", "torchvision==" + metadata["required_packages_version"]["torchvision"]]
    stamp_value = hashlib.md5(json.dumps([torch_pins, pins]).encode()).hexdigest()
    stamp = CHECK_VENV / ".adaqat-bundle-check"
    python = CHECK_VENV / "bin" / "python"
    if stamp.exists() and stamp.read_text() == stamp_value and python.exists():
        return python
    shutil.rmtree(CHECK_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(CHECK_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # this environment's torch hard-linked (the same pinned wheels; saves 5.5 GB of disk), then the pinned install
    # as the set-up scripts do, which installs from the registry whatever could not be linked
    subprocess.run([sys.executable, str(REPO / "scripts" / "link_torch.py"), str(CHECK_VENV)])
    subprocess.run(pip + torch_pins, check=True)
    subprocess.run(pip + pins, check=True)
    stamp.write_text(stamp_value)
    return python


def _bundle_run(python: Path, bundle: Path, cwd: Path, configs: list[str], **overrides: object) -> None:
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [str(python), "-m", "monai.bundle", "run", "--bundle_root", str(bundle),
           "--config_file", str(files) if len(files) > 1 else files[0],
           "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.mark.e2e
def test_zip_runs_in_a_fresh_venv_from_outside_the_bundle(package_zip, metadata, jsrt_dir, tmp_path):
    from scripts.data.cxr_io import read_mask
    from scripts.data.datasets import select_split

    python = _check_venv(metadata)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "monailabel" not in installed and "adaqat" not in installed  # nothing of this repo leaks in

    with zipfile.ZipFile(package_zip) as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / NAME
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # inference (the shipped default: the INT8 model) on JSRT test images
    items = select_split(jsrt_dir, "test", by="image")[:3]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for item in items:
        shutil.copy(item["image"], inputs)
    _bundle_run(python, bundle, elsewhere, ["inference.json"], dataset_dir=inputs, output_dir=tmp_path / "pred")
    for item in items:
        mask = read_mask(tmp_path / "pred" / f"{Path(item['image']).stem}_mask.png")
        assert _dice(mask, read_mask(item["label"])) > 0.8

    # evaluation of the FP32 model (train.json + evaluate.json, as the zoo's convention)
    _bundle_run(python, bundle, elsewhere, ["train.json", "evaluate.json"], dataset_dir=jsrt_dir, limit=6,
                model_path=bundle / "models" / "model.pt", output_dir=tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_images"] == 6
    assert summary["metrics"]["dice"]["mean"] > 0.8

    # one epoch of training (stage 1 on the shipped FP32 model) ends with an exported model
    export = tmp_path / "trained" / "model.pt"
    _bundle_run(python, bundle, elsewhere, ["train.json"], dataset_dir=jsrt_dir, limit=8, num_epochs=1, batch_size=4,
                sam_checkpoint=bundle / "models" / "model.pt", run_dir=tmp_path / "run", export_path=export)
    assert export.is_file() and export.stat().st_size > 1_000_000
    assert not (bundle / "runs").exists() or not any((bundle / "runs").iterdir())  # outputs went where asked


def _download(url: str, bundle_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", url, "--bundle_dir", str(bundle_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return bundle_dir / NAME


def _assert_downloaded(root: Path, metadata: dict) -> None:
    assert json.loads((root / "configs" / "metadata.json").read_text())["version"] == metadata["version"]
    for entry in yaml.safe_load((root / "large_files.yml").read_text())["large_files"]:
        assert _sha256(root / entry["path"]) == entry["hash_val"]


@pytest.mark.e2e
def test_download_from_file_url(package_zip, metadata, tmp_path):
    _assert_downloaded(_download(package_zip.as_uri(), tmp_path / "bundles"), metadata)


@pytest.mark.e2e
def test_download_from_github_release_layout_on_loopback(package_zip, metadata, tmp_path):
    """The asset path GitHub serves releases under (what `--source github --repo owner/repo/tag` fetches),
    from a local folder on 127.0.0.1."""
    tag = f"v{metadata['version']}"
    release = tmp_path / "site" / "adaqat" / "adaqat-cxr" / "releases" / "download" / tag
    release.mkdir(parents=True)
    shutil.copy(package_zip, release / package_zip.name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "site")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/adaqat/adaqat-cxr/releases/download/{tag}/{package_zip.name}"
        _assert_downloaded(_download(url, tmp_path / "bundles"), metadata)
    finally:
        server.shutdown()
        server.server_close()


def _serve(folder: Path) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.e2e
def test_zip_without_weights_downloads_them_with_their_hashes(shipped_models, tmp_path):
    """A zip that lists the weights but leaves them out: MONAI's download_large_files fetches each from its URL
    (a release folder on loopback) and checks its sha256; a file that does not match is refused, not installed."""
    release = tmp_path / "release"
    shutil.copytree(shipped_models["int8"].parent, release, ignore=shutil.ignore_patterns(".gitkeep"))
    server = _serve(release)
    try:
        url = f"http://127.0.0.1:{server.server_port}/{{file}}"
        zipped = packager.package(shipped_models["int8"].parent, tmp_path / "dist", url=url, with_weights=False)
        with zipfile.ZipFile(zipped) as zf:
            assert not [n for n in zf.namelist() if "/models/" in n]  # no weight in the zip
            zf.extractall(tmp_path / "unzipped")
        root = tmp_path / "unzipped" / NAME
        entries = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
        fetch = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(root)]
        out = subprocess.run(fetch, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        for entry in entries:
            assert _sha256(root / entry["path"]) == entry["hash_val"] == _sha256(release / Path(entry["path"]).name)

        # the release's model.pt is not the one listed: the download fails on the hash and leaves no such file
        (root / "models" / "model.pt").unlink()
        (release / "model.pt").write_bytes(b"tampered" + (release / "model.pt").read_bytes()[8:])
        out = subprocess.run(fetch, capture_output=True, text=True, timeout=600)
        assert out.returncode != 0 and "check of downloaded file failed" in out.stdout + out.stderr
        assert not (root / "models" / "model.pt").exists()
    finally:
        server.shutdown()
        server.server_close()
