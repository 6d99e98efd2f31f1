"""The quality score: one evidence computation for both routes, a calibration that is what scikit-learn fits, and
a score and a review flag wherever a mask is written (CLI summary and JSON, evaluation, torch-free predictor)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, optional_module
from PIL import Image

from adaqat import quality
from adaqat.cli import main as adaqat_main
from scripts.data.cxr_io import read_cxr
from scripts.data.datasets import select_split
from scripts.deploy.quality import (FEATURES, QualityModel, calibration_path, evidence, jittered_boxes,
                                    load_quality_model, report_path)
from scripts.model_files.load import load_model

optional_module("onnxruntime", "the torch-free predictor's score")
optional_module("sklearn", "the quality calibration is fitted with scikit-learn")


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32))[None, None]


def _non_chest(path: Path) -> Path:
    """A photograph (scikit-image's camera man, public domain): passes the input screen, has no chest."""
    from skimage import data

    Image.fromarray(data.camera()).save(path)
    return path


def test_evidence_of_a_clean_two_lung_mask_and_of_a_disagreeing_one():
    yy, xx = np.mgrid[0:64, 0:64]
    lungs = np.where(((xx - 20) ** 2 / 60 + (yy - 32) ** 2 / 300 < 1) | ((xx - 44) ** 2 / 60 + (yy - 32) ** 2 / 300 < 1), 8.0, -8.0)
    good = evidence(lungs, 0.9, lungs, 0.9, [lungs] * 4, lungs, 0.9)
    assert good["components"] == 2 and good["agree_first"] == 1.0 and good["min_jitter"] == 1.0
    assert 0.9 < good["balance"] <= 1.0 and good["top2_share"] == 1.0 and good["centre_offset"] < 0.02
    assert good["uncertain"] == 0.0 and good["confidence"] > 0.99
    blob = np.where((xx - 10) ** 2 + (yy - 10) ** 2 < 30, 0.5, -0.5)
    bad = evidence(lungs, 0.9, blob, 0.9, [lungs, blob, -lungs, blob], blob, 0.9)
    assert bad["agree_first"] == 0.0 and bad["min_jitter"] == 0.0 and bad["components"] == 1
    assert bad["uncertain"] > 1.0 and bad["centre_offset"] > 0.3
    assert set(good) == set(FEATURES)
    boxes = jittered_boxes(np.array([10, 10, 50, 50], np.float32), 64)
    assert len(boxes) == 4 and all((b >= 0).all() and (b <= 64).all() for b in boxes)
    assert boxes[0][0] < 10 < boxes[1][0]  # grown, then shrunk


def test_the_isotonic_map_is_what_scikit_learn_predicts_and_the_file_round_trips(tmp_path):
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    samples = [quality.Sample(f"s{i}", "g", {f: float(rng.random()) for f in FEATURES}, float(rng.random()), 0.0)
               for i in range(60)]
    fitted = quality.fit_quality_model(samples, ("agree_first", "uncertain"))
    raw = np.array([fitted.raw(s.evidence) for s in samples])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, [s.real_dice for s in samples])
    probe = np.linspace(raw.min() - 1, raw.max() + 1, 50)
    ours = np.interp(probe, fitted.isotonic_x, fitted.isotonic_y)
    np.testing.assert_allclose(ours, iso.predict(probe), atol=1e-9)
    again = QualityModel.from_json(fitted.to_json())
    assert again == fitted
    broken = tmp_path / "model.quality.json"
    broken.write_text('{"features": ["agree_first"], "mean": [0.5]}')
    with pytest.raises(ValueError, match=r"model\.quality\.json: not a quality model"):
        QualityModel.from_json(broken.read_text(), str(broken))


def test_a_calibration_is_refused_for_another_model_file(shipped_models, tmp_path):
    model = Path(shutil.copy(shipped_models["int8"], tmp_path / "model_int8.pt"))
    shutil.copy(calibration_path(shipped_models["int8"]), calibration_path(model))
    assert load_quality_model(model)[0] is not None
    other = Path(shutil.copy(shipped_models["fp32"], tmp_path / "other.pt"))
    shutil.copy(calibration_path(shipped_models["int8"]), calibration_path(other))
    found, reason = load_quality_model(other)
    assert found is None and "fitted for another model file" in reason
    assert load_quality_model(tmp_path / "none.pt")[0] is None
    assert report_path("out/x_mask.nii.gz").name == "x_mask.quality.json"


def test_every_shipped_model_has_its_calibration(shipped_models):
    for key in ("fp32", "int8"):
        found, reason = load_quality_model(shipped_models[key])
        assert found is not None, reason
        assert found.info["calibration_images"] >= 30 and found.info["candidate"] in quality.CANDIDATES


@pytest.mark.e2e
def test_evidence_is_the_same_in_both_routes_and_leaves_the_mask_unchanged(shipped_models, jsrt_dir, tmp_path):
    model = Path(shutil.copy(shipped_models["int8"], tmp_path / "model_int8.pt"))
    for name in ("encoder-256", "decoder-256"):
        shutil.copy(shipped_models["int8"].with_name(f"model_int8.{name}.onnx"), tmp_path)
    eager, onnx = load_model(model, runtime="eager"), load_model(model, runtime="onnx")
    scorer = load_quality_model(shipped_models["int8"])[0]
    for item in select_split(jsrt_dir, "test", by="image")[:6]:
        x = _tensor(read_cxr(item["image"])[0])
        with torch.no_grad():
            plain = eager(x)
            eager.record_evidence = onnx.record_evidence = True
            scored, _ = eager(x), onnx(x)
            eager.record_evidence = onnx.record_evidence = False
        assert torch.equal(plain, scored)
        a, b = eager.last_evidence[0], onnx.last_evidence[0]
        for key in FEATURES:
            assert abs(a[key] - b[key]) < 0.02, (key, a[key], b[key])
        assert abs(scorer.predict(a) - scorer.predict(b)) < 0.02


@pytest.mark.e2e
def test_infer_writes_a_score_beside_each_mask_and_a_summary_with_errors(shipped_models, jsrt_dir, tmp_path):
    good = str(jsrt_dir / "images" / "JPCLN001.png")  # a JSRT image (not in the calibration's validation split)
    photo = str(_non_chest(tmp_path / "camera.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(good).read_bytes()[:300])
    out = tmp_path / "out"
    assert adaqat_main(["infer", good, photo, str(broken), "-o", str(out)]) == 1  # one input refused
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["JPCLN001.png"]["status"] == "ok" and rows["JPCLN001.png"]["review"] == "False"
    assert float(rows["JPCLN001.png"]["predicted_dice"]) > 0.9
    assert rows["camera.png"]["review"] == "True" and float(rows["camera.png"]["predicted_dice"]) < 0.9
    assert rows["broken.png"]["status"] == "error" and "broken.png" in rows["broken.png"]["error"]
    report = json.loads((out / "JPCLN001_mask.quality.json").read_text())
    assert report["mask"] == "JPCLN001_mask.png" and report["predicted_dice"] == float(rows["JPCLN001.png"]["predicted_dice"])
    assert set(report["evidence"]) == set(FEATURES)
    # the torch-free predictor, in a process without torch, scores the same images the same way
    code = "import sys; sys.modules['torch'] = None; from scripts.deploy.predictor import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, good, photo, "-o", str(tmp_path / "onnx"), "--model",
                           str(shipped_models["int8"])], capture_output=True, text=True, cwd=BUNDLE_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REVIEW" in done.stdout
    onnx_rows = {Path(r["file"]).name: r for r in csv.DictReader((tmp_path / "onnx" / "summary.csv").open())}
    for name in ("JPCLN001.png", "camera.png"):
        assert onnx_rows[name]["review"] == rows[name]["review"]
        assert abs(float(onnx_rows[name]["predicted_dice"]) - float(rows[name]["predicted_dice"])) < 0.02
    assert (tmp_path / "onnx" / "camera_mask.quality.json").is_file()


@pytest.mark.e2e
def test_evaluate_reports_predicted_beside_real_dice(shipped_models, jsrt_dir, tmp_path):
    out = tmp_path / "eval"
    adaqat_main(["evaluate", "--model", str(shipped_models["int8"]), "--data", str(jsrt_dir), "--split-by", "image",
                 "--limit", "5", "-o", str(out)])
    rows = list(csv.DictReader((out / "metrics_quality.csv").open()))
    assert len(rows) == 5
    for row in rows:
        assert 0.0 <= float(row["predicted_dice"]) <= 1.0 and float(row["real_dice"]) > 0.8
        assert abs(float(row["predicted_dice"]) - float(row["real_dice"])) < 0.1
    assert (out / "metrics_quality.png").is_file()


def test_calibrate_fits_on_degraded_and_non_chest_samples_and_records_the_model(shipped_models, jsrt_dir, tmp_path):
    model = Path(shutil.copy(shipped_models["int8"], tmp_path / "model_int8.pt"))
    items = select_split(jsrt_dir, "val", by="image")[:4]
    network = load_model(model, runtime="eager")
    fitted, summary = quality.calibrate(model, items, network)
    groups = {s.group for s in summary["samples"]}
    assert groups == {"calibration", "calibration_non_chest"}
    assert len(summary["samples"]) == 4 * 3 + 30
    assert any(":" in s.name for s in summary["samples"])  # degraded copies were scored with transformed references
    assert fitted.info["candidate"] in quality.CANDIDATES and set(summary["cross_validated"]) == set(quality.CANDIDATES)
    assert np.all(np.diff(fitted.isotonic_y) >= 0)
    calibration_path(model).write_text(fitted.to_json())
    assert load_quality_model(model)[0] == fitted
