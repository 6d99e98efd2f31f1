"""The MONAI Label server under load (issue 16, item 2): /infer requests (300, the issue's figure; ``ADAQAT_LOAD_REQUESTS``
sets another, see N_REQUESTS) from 4 concurrent clients on loopback,
mixing valid PNG, DICOM and NIfTI uploads of real JSRT images with corrupt, oversize, 3-D and wrong-type uploads,
and one /train (1 epoch, 1 QAT epoch) submitted while inference goes on.

Pass: every valid request answers 200 with a mask equal to the same upload run offline (Dice >= 0.99); every
invalid one a 4xx whose ``detail`` names the problem; no 5xx; /info still answers afterwards; the server process's
resident memory after warm-up (20 requests) grows by less than 15 % to the end; the loop stops by itself at a
deadline (and the test then fails saying so). p50/p95 latencies are printed and written to ``load_report.json``
in the test's tmp folder and to ``runs/tests/monailabel_load.json`` beside the server test's latency file.

Which model the offline reference is: /train replaces ``models/model.pt`` (end of stage 1) and
``models/model_int8.pt`` (end of stage 2) while requests are in flight, and the server reloads a model file on
the first request after its mtime changes. A watcher polls both files and keeps a copy of every version it sees,
with the time it appeared; each valid result is compared with the offline masks of the versions that could have
served it (those live at some point between the request's start and end, with the watcher's poll interval as
slack), and must match one of them at Dice >= 0.99. So the bar stays 0.99 throughout instead of dropping to a
looser one after training, and a request served by a half-loaded or mixed model would still fail.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel_client import listening_addresses, dice, running_server

REPO = Path(__file__).resolve().parents[1]
ML_PYTHON = REPO / ".venv-monailabel" / "bin" / "python"
REPORT_FILE = REPO / "runs" / "tests" / "monailabel_load.json"  # beside monailabel_latencies.json
# 300 requests (the figure): 4 min 6 s for the whole test on 2 idle cores (loop 222 s of the 600 s
# deadline); on cores shared with other jobs 120 took 8 min 46 s, so the deadline fails a starved machine loudly.
N_REQUESTS = int(os.environ.get("ADAQAT_LOAD_REQUESTS", "300"))
N_CLIENTS, N_WARMUP = 4, 20
VALID_SHARE = 0.62  # of the requests after warm-up; the rest are invalid uploads, all kinds in turn
LOOP_DEADLINE_S = 600.0  # the request loop stops by itself after this, and the test fails saying so
TRAIN_WAIT_S = 900.0  # from its submission, how long /train may take (572 s measured on a busy 2-core machine)
N_IMAGES = 6  # distinct JSRT test images, each uploaded as PNG, DICOM and NIfTI
N_STUDIES, N_LABELLED = 5, 4  # the datastore /train learns from (as in test_monailabel_server.py)
MODELS = ("adaqat_fp32", "adaqat_int8")
MODEL_FILES = {"adaqat_fp32": "model.pt", "adaqat_int8": "model_int8.pt"}
PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}
TRAIN_PARAMS = {"max_epochs": 1, "qat_epochs": 1, "device": "cpu", "val_split": 0.25, "batch_size": 2}
MIN_DICE, MAX_RSS_GROWTH = 0.99, 0.15
POLL_S = 0.25
# invalid kind -> (expected status, words one of which the reply's detail must contain)
INVALID = {
    "corrupt_png": (422, ("cannot read",)),
    "corrupt_dicom": (422, ("cannot read", "cannot decode")),
    "corrupt_nifti": (422, ("truncated", "damaged")),
    "oversize_png": (422, ("over the limit",)),
    "oversize_declared_png": (422, ("over the limit",)),
    "volume_3d_nifti": (422, ("3-D volume",)),
    "text_as_png": (422, ("cannot read",)),
    "pdf": (400, ("unsupported image type",)),
}
VALID = ("png", "dicom", "nifti")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ML_PYTHON.exists() and not os.environ.get("ADAQAT_REQUIRE_MONAILABEL"),
                       reason="MONAI Label environment missing: run `bash scripts/setup_monailabel_env.sh` "
                       "(CI does, in .ci/run, and sets ADAQAT_REQUIRE_MONAILABEL so that a missing one fails)"),
]


def _png(width: int, height: int, rows: int | None = None) -> bytes:
    """A black 8-bit grey PNG of ``width`` x ``height``; ``rows`` < height leaves the pixel data short (truncated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress((b"\x00" * (width + 1)) * (height if rows is None else rows), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


@pytest.fixture(scope="module")
def load_studies(jsrt_dir, tmp_path_factory) -> dict:
    """The datastore (five JSRT test-split studies, four labelled for /train) and the images to upload (the next six)."""
    from scripts.data.datasets import select_split

    items = select_split(jsrt_dir, "test", by="image")[:N_STUDIES + N_IMAGES]
    root = tmp_path_factory.mktemp("ml_load_studies")
    (root / "labels" / "final").mkdir(parents=True)
    for i, item in enumerate(items[:N_STUDIES]):
        shutil.copy(item["image"], root)
        if i < N_LABELLED:
            shutil.copy(item["label"], root / "labels" / "final" / Path(item["image"]).name)
    return {"dir": root, "uploads": [Path(item["image"]) for item in items[N_STUDIES:]]}


@pytest.fixture(scope="module")
def load_server(shipped_models, load_studies, tmp_path_factory):
    """The app serving a copy of the bundle as it ships; yields (client, bundle folder, server PID, port)."""
    bundle = tmp_path_factory.mktemp("ml_load_bundle") / "adaqat_cxr_lung"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("runs", "__pycache__", "eval", "predictions"))
    log_path = tmp_path_factory.mktemp("ml_load_log") / "server.log"
    with running_server(load_studies["dir"], bundle, log_path, timeout=120) as (client, proc, port):
        yield client, bundle, proc.pid, port, log_path


def _uploads(images: list[Path], folder: Path) -> tuple[dict, dict]:
    """Valid uploads ((image index, format) -> (name, bytes)) and invalid ones (kind -> (name, bytes))."""
    from dicom_writer import make_dicom
    from PIL import Image

    valid: dict[tuple[int, str], tuple[str, bytes]] = {}
    for i, image in enumerate(images):
        pixels = np.asarray(Image.open(image).convert("L"))
        valid[i, "png"] = (f"cxr{i}.png", image.read_bytes())
        valid[i, "dicom"] = (f"cxr{i}.dcm", make_dicom(folder / f"cxr{i}.dcm", pixels.astype(np.uint16) * 16).read_bytes())
        volume = sitk.GetImageFromArray(pixels[None].astype(np.int16))  # Slicer's upload: a one-slice volume
        volume.SetSpacing((0.7, 0.8, 2.5))
        volume.SetOrigin((-12.0, 30.5, 7.0))
        sitk.WriteImage(volume, str(folder / f"cxr{i}.nii.gz"))
        valid[i, "nifti"] = (f"cxr{i}.nii.gz", (folder / f"cxr{i}.nii.gz").read_bytes())
    stack = np.stack([np.asarray(Image.open(images[k % len(images)]).convert("L")) for k in range(40)]).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(stack), str(folder / "ct.nii.gz"))
    pdf = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >>"
           b" endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    invalid = {
        "corrupt_png": ("cut.png", valid[0, "png"][1][: len(valid[0, "png"][1]) // 2]),
        "corrupt_dicom": ("cut.dcm", valid[1, "dicom"][1][: len(valid[1, "dicom"][1]) * 3 // 5]),
        "corrupt_nifti": ("cut.nii.gz", valid[2, "nifti"][1][: len(valid[2, "nifti"][1]) * 3 // 5]),
        "oversize_png": ("huge.png", _png(15000, 14000)),  # 210 Mpx of real pixel data, ~200 KB compressed
        "oversize_declared_png": ("bomb.png", _png(60000, 60000, rows=4)),  # declares 3.6 Gpx, carries 4 rows
        "volume_3d_nifti": ("ct.nii.gz", (folder / "ct.nii.gz").read_bytes()),
        "text_as_png": ("notes.png", b"not an image, just text\n" * 20),
        "pdf": ("report.pdf", pdf),
    }
    return valid, invalid


def _offline_masks(model_file: Path, files: dict[tuple[int, str], Path], keep_components: int) -> dict:
    """The server's computation without the server: the engine's loader and reader, then inference.json's post-processing."""
    import torch
    from monai.transforms import Activations, AsDiscrete, Compose, FillHoles, KeepLargestConnectedComponent
    from scripts.data.cxr_io import read_cxr
    from scripts.model_files.load import load_model

    network = load_model(model_file, device="cpu")
    post = Compose([Activations(sigmoid=True), AsDiscrete(threshold=0.5),
                    KeepLargestConnectedComponent(applied_labels=[1], num_components=keep_components),
                    FillHoles(applied_labels=[1])])
    masks = {}
    with torch.no_grad():
        for key, path in files.items():
            image, _ = read_cxr(path)
            logits = network(torch.from_numpy(np.asarray(image, np.float32))[None, None])[0]
            masks[key] = np.asarray(post(logits))[0] > 0
    return masks


class _ModelWatcher(threading.Thread):
    """Polls the bundle's model files; keeps a copy of every version with the time (perf_counter) it was first seen."""

    def __init__(self, models_dir: Path, copies: Path) -> None:
        super().__init__(daemon=True)
        self.models_dir, self.copies = models_dir, copies
        self.versions: dict[str, list[tuple[float, Path]]] = {}
        self.stop = threading.Event()
        self._seen: dict[str, tuple] = {}
        self._poll(first=True)

    def _poll(self, first: bool = False) -> None:
        for name in MODEL_FILES.values():
            path = self.models_dir / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._seen.get(name) != sig:
                self._seen[name] = sig
                n = len(self.versions.setdefault(name, []))
                copy = self.copies / f"v{n}_{name}"
                shutil.copy2(path, copy)  # files are replaced atomically, so the copy is one whole version
                self.versions[name].append((-math.inf if first else time.perf_counter(), copy))

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self._poll()


def test_server_under_load(load_server, load_studies, tmp_path):
    import psutil

    client, bundle, pid, port, log_path = load_server
    started_test, wall_started = time.perf_counter(), time.time()
    assert listening_addresses(port) and set(listening_addresses(port)) == {"0100007F"}, listening_addresses(port)
    server = psutil.Process(pid)
    assert "monailabel.main" in " ".join(server.cmdline()), server.cmdline()  # the script exec'd into the server

    valid, invalid = _uploads(load_studies["uploads"], tmp_path)
    upload_files = {}
    for key, (name, data) in valid.items():
        upload_files[key] = tmp_path / f"ref_{name}"
        upload_files[key].write_bytes(data)
    keep = int(json.loads((bundle / "configs" / "inference.json").read_text())["keep_components"])
    watcher = _ModelWatcher(bundle / "models", tmp_path)
    offline: dict[Path, dict] = {}  # model file copy -> offline masks
    for versions in watcher.versions.values():
        offline[versions[0][1]] = _offline_masks(versions[0][1], upload_files, keep)

    # the schedule: warm-up touches every kind and both models, the rest is shuffled
    rng = np.random.default_rng(16)
    warmup = [("valid", (i % N_IMAGES, fmt), MODELS[i % 2]) for i, fmt in enumerate(VALID * 4)]
    warmup += [("invalid", kind, MODELS[i % 2]) for i, kind in enumerate(INVALID)]
    n_valid = round(VALID_SHARE * (N_REQUESTS - N_WARMUP))
    rest = [("valid", (int(rng.integers(N_IMAGES)), VALID[i % 3]), MODELS[int(rng.integers(2))]) for i in range(n_valid)]
    rest += [("invalid", list(INVALID)[i % len(INVALID)], MODELS[int(rng.integers(2))])
             for i in range(N_REQUESTS - N_WARMUP - n_valid)]
    rest = [rest[k] for k in rng.permutation(len(rest))]
    jobs = warmup + rest
    assert len(warmup) == N_WARMUP and len(jobs) == N_REQUESTS

    results: list[dict | None] = [None] * len(jobs)
    lock = threading.Lock()
    deadline = time.perf_counter() + LOOP_DEADLINE_S
    state = {"next": 0, "timed_out": False}

    def worker(stop_at: int) -> None:
        while True:
            with lock:
                k = state["next"]
                if k >= stop_at:
                    return
                if time.perf_counter() > deadline:
                    state["timed_out"] = True
                    return
                state["next"] += 1
            cls, what, model = jobs[k]
            upload = valid[what] if cls == "valid" else invalid[what]
            start = time.perf_counter()
            try:
                reply = client.infer(model, file=upload, params=PARAMS)
                status, body = reply.status, reply.body
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding, recorded as such
                status, body = None, f"{type(exc).__name__}: {exc}".encode()
            results[k] = {"cls": cls, "what": what, "model": model, "start": start, "end": time.perf_counter(),
                          "status": status, "body": body}

    def run_clients(stop_at: int) -> None:
        threads = [threading.Thread(target=worker, args=(stop_at,), daemon=True) for _ in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.perf_counter() + 150))  # a request's own timeout is 120 s

    watcher.start()
    loop_started = time.perf_counter()
    run_clients(N_WARMUP)
    rss_warm = server.memory_info().rss
    train_reply = client.train("adaqat_fp32", TRAIN_PARAMS)  # inference goes on while it runs
    train_submitted = time.perf_counter()
    run_clients(N_REQUESTS)
    loop_s = time.perf_counter() - loop_started
    rss_end = server.memory_info().rss
    train_status = client.wait_train(timeout=max(1.0, TRAIN_WAIT_S - (time.perf_counter() - train_submitted)))
    train_s = time.perf_counter() - train_submitted
    time.sleep(2 * POLL_S)
    watcher.stop.set()
    watcher.join()
    info_status = client.info().status
    # each kind once more, alone: the server's own time for it, without the queue behind the other clients
    isolated = {}
    for kind, upload in [*((f"valid_{fmt}", valid[0, fmt]) for fmt in VALID), *invalid.items()]:
        reply = client.infer("adaqat_int8", file=upload, params=PARAMS)
        isolated[kind] = {"status": reply.status, "s": round(reply.seconds, 3)}

    # offline masks of every model version training produced
    for versions in watcher.versions.values():
        for _, copy in versions[1:]:
            offline[copy] = _offline_masks(copy, upload_files, keep)

    def candidates(model: str, start: float, end: float) -> list[Path]:
        versions = watcher.versions[MODEL_FILES[model]]
        live = []
        for j, (seen, copy) in enumerate(versions):
            until = versions[j + 1][0] if j + 1 < len(versions) else math.inf
            if seen - 2 * POLL_S <= end and until >= start:  # appeared up to one poll before it was seen
                live.append(copy)
        return live

    failures: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    latencies: dict[str, list[float]] = {}
    dices_new, served_after_replacement = [], 0
    for k, r in enumerate(results):
        if r is None:
            continue
        label = r["what"][1] if r["cls"] == "valid" else r["what"]
        counts.setdefault(label, {}).setdefault(str(r["status"]), 0)
        counts[label][str(r["status"])] += 1
        latencies.setdefault(r["cls"], []).append(r["end"] - r["start"])
        latencies.setdefault(label, []).append(r["end"] - r["start"])
        where = f"request {k} ({label}, {r['model']})"
        if r["status"] is None or r["status"] >= 500:
            failures.append(f"{where}: {r['status']} {r['body'][:300]!r}")
            continue
        if r["cls"] == "invalid":
            status, words = INVALID[r["what"]]
            try:
                detail = json.loads(r["body"])["detail"]
            except (ValueError, KeyError, TypeError):
                detail = r["body"][:300].decode(errors="replace")
            if r["status"] != status or not any(w in str(detail) for w in words) or "/tmp/" in str(detail):
                failures.append(f"{where}: expected {status} naming {words}, got {r['status']}: {str(detail)[:300]}")
            continue
        if r["status"] != 200:
            failures.append(f"{where}: {r['status']} {r['body'][:300]!r}")
            continue
        result_path = tmp_path / f"result_{k}.nrrd"
        result_path.write_bytes(r["body"])
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(result_path)))
        result_path.unlink()
        live = candidates(r["model"], r["start"], r["end"])
        reference = offline[live[0]][r["what"]]
        if arr.size != reference.size or not set(np.unique(arr)) <= {0, 1}:
            failures.append(f"{where}: result of shape {arr.shape} values {np.unique(arr)[:5]}, expected {reference.shape} in {{0, 1}}")
            continue
        best = max(dice(arr.reshape(reference.shape), offline[c][r["what"]]) for c in live)
        if live[0] != watcher.versions[MODEL_FILES[r["model"]]][0][1] or len(live) > 1:
            served_after_replacement += 1
            dices_new.append(best)
        if best < MIN_DICE:
            failures.append(f"{where}: Dice {best:.4f} vs offline ({[c.name for c in live]}) < {MIN_DICE}")

    for kind, r in isolated.items():
        expected = 200 if kind.startswith("valid_") else INVALID[kind][0]
        if r["status"] != expected:
            failures.append(f"isolated {kind}: expected {expected}, got {r['status']}")
    # uploads the server left behind: MONAI Label deletes an upload only after a successful response; the app
    # deletes a refused one (main.py), so none may stay in the temp folder
    sizes = {len(data) for _, data in invalid.values()}
    left = [f for f in Path(tempfile.gettempdir()).glob("tmp*") if f.is_file() and f.stat().st_mtime >= wall_started
            and f.stat().st_size in sizes and any(f.name.endswith(Path(n).suffix) for n, _ in invalid.values())]
    if left:
        failures.append(f"{len(left)} refused uploads left in {tempfile.gettempdir()}")
    done = sum(r is not None for r in results)
    growth = (rss_end - rss_warm) / rss_warm
    all_latencies = [s for cls in ("valid", "invalid") for s in latencies.get(cls, [])]
    report = {
        "requests": done, "clients": N_CLIENTS, "loop_s": round(loop_s, 1),
        "status_by_kind": counts,
        "latency_s": {name: {"n": len(v), "p50": _percentile(v, 50), "p95": _percentile(v, 95), "max": _percentile(v, 100)}
                      for name, v in {"all": all_latencies, **latencies}.items()},
        "rss_mb": {"after_warmup": round(rss_warm / 2**20, 1), "end": round(rss_end / 2**20, 1), "growth": round(growth, 4)},
        "train": {"submit_status": train_reply.status, "status": train_status.get("status"), "seconds": round(train_s, 1),
                  "model_versions": {name: len(v) for name, v in watcher.versions.items()},
                  "replaced_at_s": {name: [round(t - loop_started, 1) for t, _ in v[1:]] for name, v in watcher.versions.items()},
                  "valid_results_after_replacement": served_after_replacement,
                  "their_min_dice": round(min(dices_new), 4) if dices_new else None},
        "info_after": info_status,
        "isolated_after_load": isolated,
        "refused_uploads_left_in_tmp": {"files": len(left), "mb": round(sum(f.stat().st_size for f in left) / 2**20, 1)},
        "test_s": round(time.perf_counter() - started_test, 1),
        "failures": failures[:50],
    }
    text = json.dumps(report, indent=2)
    print(text)
    (tmp_path / "load_report.json").write_text(text)
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(text)

    assert not state["timed_out"] and done == N_REQUESTS, (
        f"load loop stopped at its {LOOP_DEADLINE_S:.0f} s deadline after {done} of {N_REQUESTS} requests")
    assert not failures, f"{len(failures)} bad answers, first: " + "\n".join(failures[:20])
    assert info_status == 200, "server not healthy after the load: /info answered " + str(info_status)
    assert train_reply.status == 200, train_reply.body[:500]
    assert train_status.get("status") == "DONE", json.dumps(train_status)[-2000:]
    assert growth < MAX_RSS_GROWTH, f"server RSS grew {growth:.1%} after warm-up ({report['rss_mb']})"
