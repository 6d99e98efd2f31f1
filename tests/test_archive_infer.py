"""Inference at archive scale (issue 16): a folder tree of 2,000 radiographs in 2 torchrun workers, killed midway
and resumed; every good file gets exactly one mask, every broken one a summary row with its error, memory stays
flat with the count (peak RSS against a 200-file run), and no half-written file is ever taken for a finished one.

`pytest -s` prints the figures (files/s, peak RSS).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_writer import make_dicom
from PIL import Image
from process_tree import kill_tree, run_tree
from scripts.data.archive import output_paths, read_manifest, shard, tree_datalist
from scripts.data.datasets import inference_datalist

pytestmark = [pytest.mark.e2e, pytest.mark.archive]
MASK_ENDINGS = ("_mask.png", "_mask.nii.gz", "_seg.dcm")  # PNG and JPEG -> PNG, NIfTI -> NIfTI, DICOM -> DICOM SEG

KINDS = ("png8", "png16", "jpeg", "dicom", "nifti")
BROKEN = {  # name -> (bytes or builder, what its error must say)
    "truncated.png": "cannot read|truncated|damaged",
    "zero_byte.png": r"empty \(0 bytes\)",
    "text_as.png": "cannot read",
    "one_pixel.png": "at least",
    "all_black.png": "blank",
    "truncated.dcm": "cannot read|truncated|damaged|no pixel data",
}


def _sources(jsrt_dir: Path, sample_dir: Path) -> list[np.ndarray]:
    paths = sorted((jsrt_dir / "images").glob("*.png"))[:60] + sorted((sample_dir / "images").glob("*.png"))[:20]
    return [np.asarray(Image.open(p).convert("L")) for p in paths]


def make_archive(root: Path, count: int, sources: list[np.ndarray], seed: int = 0) -> tuple[list[Path], dict[Path, str]]:
    """``count`` radiographs in series folders of 100 (copies of real ones in 5 encodings and sizes 160-600 px)
    plus the broken files of ``BROKEN`` in a folder of their own."""
    rng = np.random.default_rng(seed)
    good = []
    for i in range(count):
        folder = root / f"series_{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        gray = sources[i % len(sources)]
        side = int(rng.integers(160, 601))
        image = np.asarray(Image.fromarray(gray).resize((side, int(side * gray.shape[0] / gray.shape[1])), Image.BILINEAR))
        kind = KINDS[i % len(KINDS)]
        name = folder / f"IM{i:05d}"
        if kind == "png8":
            Image.fromarray(image).save(path := name.with_suffix(".png"))
        elif kind == "png16":
            Image.fromarray(image.astype(np.uint16) * 257).save(path := name.with_suffix(".png"))
        elif kind == "jpeg":
            Image.fromarray(image).save(path := name.with_suffix(".jpg"), quality=92)
        elif kind == "dicom":
            path = make_dicom(name.with_suffix(".dcm"), image.astype(np.uint16) * 16)
        else:
            nib.save(nib.Nifti1Image(image.T[:, :, None].astype(np.int16), np.eye(4)), str(path := name.with_suffix(".nii.gz")))
        good.append(path)
    broken_dir = root / "broken"
    broken_dir.mkdir()
    png = good[0].read_bytes()
    (broken_dir / "truncated.png").write_bytes(png[: len(png) // 2])
    (broken_dir / "zero_byte.png").write_bytes(b"")
    (broken_dir / "text_as.png").write_text("patient list, not an image\n")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(broken_dir / "one_pixel.png")
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(broken_dir / "all_black.png")
    dcm = next(p for p in good if p.suffix == ".dcm").read_bytes()
    (broken_dir / "truncated.dcm").write_bytes(dcm[: len(dcm) // 3])
    return good, {broken_dir / name: expect for name, expect in BROKEN.items()}


def _command(tree: Path, out: Path, *extra: str) -> list[str]:
    """torchrun with 2 workers, wrapped so the peak RSS of the largest worker is printed (RUSAGE_CHILDREN)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True); sys.exit(r.returncode)")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [sys.executable, "-c", wrapper, *torchrun, "-m", "adaqat.cli", "infer", str(tree), "--recursive", "-o", str(out), *extra]


def _env() -> dict[str, str]:
    """``OMP_NUM_THREADS`` set machine-wide, as CI and cluster profiles do: each worker must take its share of the
    cores itself (``scripts.deploy.threads``), or 2 workers of 2 threads each run 10x slower on 2 cores."""
    return {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}


def _run(tree: Path, out: Path, *extra: str, timeout: float = 900) -> tuple[int, int, float, str]:
    start = time.perf_counter()
    try:
        done = run_tree(_command(tree, out, *extra), timeout, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"adaqat infer over {tree.name} still running after {timeout:.0f} s (stopped, workers included)")
    seconds = time.perf_counter() - start
    peak = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
    return done.returncode, peak, seconds, done.stdout + done.stderr


def _reports(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.quality.json") if not p.name.startswith(".")]


def test_manifest_tree_and_shards(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/x.png", "a/b/x.png", "a/.hidden.png"):
        Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    items = tree_datalist(tmp_path / "a")
    assert [(Path(i["image"]).relative_to(tmp_path).as_posix(), i["subdir"]) for i in items] == [("a/x.png", "."), ("a/b/x.png", "b")]
    assert output_paths(items[1], tmp_path / "out")[0] == tmp_path / "out" / "b" / "x_mask.png"
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,patient\na/x.png,1\n/abs/y.png,2\n")
    assert [i["image"] for i in read_manifest(manifest)] == [str(tmp_path / "a" / "x.png"), "/abs/y.png"]
    (tmp_path / "plain.txt").write_text("# archive\na/b/x.png\n\n")
    assert [i["image"] for i in inference_datalist([str(tmp_path / "plain.txt")])] == [str(tmp_path / "a" / "b" / "x.png")]
    (tmp_path / "bad.csv").write_text("id,site\n1,2\n")
    with pytest.raises(Exception, match="bad.csv: manifest has no image/path/file column"):
        read_manifest(tmp_path / "bad.csv")
    parts = [shard(list(range(7)), r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(7)) and not set(parts[0]) & set(parts[1])


def test_two_thousand_files_in_two_workers_killed_and_resumed(jsrt_dir, sample_dir, shipped_models, tmp_path):
    sources = _sources(jsrt_dir, sample_dir)
    small_tree, big_tree = tmp_path / "small", tmp_path / "big"
    make_archive(small_tree, 200, sources, seed=1)
    good, broken = make_archive(big_tree, 2000, sources, seed=2)

    code, small_peak, small_seconds, log = _run(small_tree, tmp_path / "out_small")
    assert code != 0 and "truncated.png" in log  # the broken files are refused, named; the rest is done
    assert len(_reports(tmp_path / "out_small")) == 200, log[-3000:]

    out = tmp_path / "out_big"
    killed = subprocess.Popen(_command(big_tree, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 600
        while len(_reports(out)) < 600 and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        assert killed.poll() is None, "the run ended before it could be killed midway"
    finally:
        kill_tree(killed)  # the wrapper, torchrun and its workers, as a crashed node
    kill_time = time.time()
    before = {p: p.stat().st_mtime for p in _reports(out)}
    assert 600 <= len(before) < 2000

    code, big_peak, big_seconds, log = _run(big_tree, out, "--resume")
    assert code != 0, log[-3000:]
    items = tree_datalist(big_tree)
    assert len(items) == 2000 + len(broken)
    for item in items:
        if Path(item["image"]) in broken:
            continue
        mask, report = output_paths(item, out)
        assert mask.is_file() and report.is_file(), item["image"]
    masks = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.endswith(MASK_ENDINGS)]
    assert len(masks) == len(good)  # exactly one mask per good file
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary left behind
    assert all(p.stat().st_mtime == t for p, t in before.items() if p.stat().st_mtime < kill_time)  # finished: not redone
    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files)) == len(items)  # one row per input, the resumed ones included
    by_file = {Path(r["file"]): r for r in rows}
    for path, expect in broken.items():
        row = by_file[path]
        assert row["status"] == "error" and path.name in row["error"], row
        assert __import__("re").search(expect, row["error"]), row
    assert all(by_file[p]["status"] == "ok" and by_file[p]["predicted_dice"] != "" for p in good)
    redone = 2000 - len(before)
    print(f"\n200 files: {small_seconds:.0f} s ({200 / small_seconds:.2f} files/s), peak RSS {small_peak / 1024:.0f} MiB; "
          f"2,000 files, resumed after a kill at {len(before)}: {redone} done in {big_seconds:.0f} s "
          f"({redone / big_seconds:.2f} files/s), peak RSS {big_peak / 1024:.0f} MiB")
    assert big_peak < 1.15 * small_peak + 64 * 1024, (small_peak, big_peak)  # memory does not grow with the count
