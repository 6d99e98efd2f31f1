#!/usr/bin/env python
"""What the 3D Slicer module costs a user on each route: dependency download size and install time, and the
time from Apply to a segmentation node for the shipped model on a 2048 x 2048 radiograph.

    .venv/bin/python scripts/measure_slicer_routes.py --out runs/slicer_routes.json [--skip-install]

Routes: "onnx" (the default for the shipped model: onnxruntime beside what Slicer ships) and "torch" (the
bundle's inference config: PyTorch and the engine's pins, what a user checkpoint needs). A clean virtual
environment stands in for Slicer's Python: Slicer already ships numpy, SimpleITK, pydicom and Pillow, so
those are put in first and not counted. Download size: pip's own resolution (``pip install --dry-run
--report``) of what the module installs, summed over the exact files pip chose, with sizes from the registry's
JSON API (PyPI) or the mirror's ``Content-Length``, so nothing is fetched twice to measure it. Install time and
installed size: a real ``pip install`` into that environment from the registry this machine is configured with
(the download is inside the time, at this machine's bandwidth to it).
Click-to-mask: the module's logic (real MRML from slicer-core) on a JSRT image upsampled to 2048 x 2048,
``OMP_NUM_THREADS`` = the machine's cores (2 here); median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "AdaQATSegmentation"))
sys.path.insert(0, str(REPO / "tests"))

from AdaQATSegmentationLib import dependencies  # noqa: E402

SLICER_SHIPS = ("numpy", "SimpleITK", "pydicom", "pillow")  # in Slicer's Python already: not counted
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")  # the PyTorch extension's part of the torch route
JSRT_IMAGE = REPO.parent / "shared" / "data" / "jsrt_scr_224" / "images" / "JPCLN120.png"


def pip_specs(route: str) -> list[str]:
    """What the module installs on a route, as pip specs (torch via the PyTorch extension counted too)."""
    slicer_ships = {r.module for r in dependencies.ONNX_REQUIREMENTS} - {"onnxruntime"}  # numpy, SimpleITK, pydicom, PIL
    specs = [r.pip for r in dependencies.requirements_for(route) if r.pip and r.module not in slicer_ships]
    return ([*TORCH_PINS] if route == "torch" else []) + specs


def _venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *SLICER_SHIPS], check=True)
    return python


def _registry_size(name: str, version: str, filename: str, url: str) -> int | None:
    """Size of one distribution file: PyPI's JSON API, else the ``Content-Length`` of the URL pip chose (a mirror)."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=30) as reply:
            size = next((f["size"] for f in json.load(reply)["urls"] if f["filename"] == filename), None)
        if size is not None:
            return size
    except (OSError, ValueError):
        pass
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(url.removeprefix("file:")))
        return path.stat().st_size if path.is_file() else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as reply:
            length = reply.headers.get("Content-Length")
        return int(length) if length else None
    except (OSError, ValueError):
        return None


def download_size(python: Path, specs: list[str]) -> dict:
    """pip's resolution of ``specs`` in the Slicer-like environment; bytes of every file it would fetch."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--dry-run",
                        "--ignore-installed", "--report", str(report), *specs], check=True)
        items = json.loads(report.read_text())["install"]
    packages, total, unknown = [], 0, []
    for item in items:
        meta, url = item["metadata"], item["download_info"]["url"]
        filename = url.rsplit("/", 1)[-1]
        if meta["name"].lower() in {s.lower() for s in SLICER_SHIPS}:
            continue
        size = _registry_size(meta["name"], meta["version"], filename, url)
        if size is None:
            unknown.append(filename)
            continue
        total += size
        packages.append({"name": meta["name"], "version": meta["version"], "file": filename, "bytes": size})
    return {"packages": sorted(packages, key=lambda p: -p["bytes"]), "download_bytes": total, "unsized": unknown}


def _folder_bytes(folder: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True, check=True).stdout.split()[0])


def install_time(python: Path, specs: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *specs], check=True)
    return time.perf_counter() - start


def click_to_mask(route: str, repeats: int) -> dict:
    """Seconds from the module logic's start (Apply) to the segmentation node, 2048 x 2048 radiograph."""
    import SimpleITK as sitk
    import slicer_fixtures as sf
    from AdaQATSegmentationLib.logic import AdaQATSegmentationLogic, SegmentationRequest

    image = sitk.ReadImage(str(JSRT_IMAGE))
    big = sitk.Resample(image, [2048, 2048], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                        [s * image.GetSize()[0] / 2048 for s in image.GetSpacing()], image.GetDirection())
    times = []
    for _ in range(repeats + 1):
        scene = sf.new_scene()
        volume = sf.volume_from_sitk(scene, sitk.Cast(big, sitk.sitkUInt8), "cxr 2048")
        logic = AdaQATSegmentationLogic(scene, REPO / "monai_bundle")
        start = time.perf_counter()
        node = logic.run(SegmentationRequest(volume, model="int8", device="cpu", route=route), timeout_s=900)
        times.append(time.perf_counter() - start)
        assert node.GetSegmentation().GetNumberOfSegments() >= 1
    return {"size": list(big.GetSize()[::-1]), "warmup_s": round(times[0], 2), "runs_s": [round(t, 2) for t in times[1:]],
            "median_s": round(statistics.median(times[1:]), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/slicer_routes.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-install", action="store_true", help="only the click-to-mask times")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    result: dict = {"cores": os.cpu_count(), "routes": {}}
    for route in ("onnx", "torch"):
        entry: dict = {"pip": pip_specs(route)}
        if not args.skip_install:
            folder = Path(tempfile.mkdtemp(prefix=f"slicer-python-{route}-"))
            try:
                python = _venv(folder)
                entry.update(download_size(python, entry["pip"]))
                before = _folder_bytes(folder)
                entry["install_s"] = round(install_time(python, entry["pip"]), 1)
                entry["installed_bytes"] = _folder_bytes(folder) - before
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        entry["click_to_mask"] = click_to_mask(route, args.repeats)
        result["routes"][route] = entry
        print(json.dumps({route: {k: v for k, v in entry.items() if k != "packages"}}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
