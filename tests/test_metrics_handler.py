"""SegmentationMetricsWriter driven by a real ignite Engine with MetaTensor outputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from scripts.evaluation.metrics import image_metrics
from scripts.evaluation.metrics_handler import SegmentationMetricsWriter


def square(size: int, r0: int, c0: int, side: int) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[0, r0 : r0 + side, c0 : c0 + side] = 1
    return m


def item(name: str | None, pred: torch.Tensor, label: torch.Tensor) -> dict:
    meta = {"filename_or_obj": f"/data/images/{name}.png"} if name else {}
    return {
        "image": MetaTensor(torch.rand_like(label), meta=dict(meta)),
        "pred": MetaTensor(pred, meta=dict(meta)),
        "label": MetaTensor(label, meta=dict(meta)),
    }


def run_engine(handler: SegmentationMetricsWriter, batches: list[list[dict]], max_epochs: int = 1) -> Engine:
    engine = Engine(lambda eng, batch: batch)  # the "model" returns the prepared per-image dicts
    handler.attach(engine)
    engine.run(batches, max_epochs=max_epochs)
    return engine


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_writes_rows_and_summary(tmp_path):
    lbl = square(32, 4, 4, 10)
    batches = [
        [item("case_a", lbl.clone(), lbl), item("case_b", square(32, 4, 9, 10), lbl)],
        [item("case_c", torch.zeros(1, 32, 32), lbl)],
    ]
    handler = SegmentationMetricsWriter(tmp_path, prefix="val")
    engine = run_engine(handler, batches)

    rows = read_csv(tmp_path / "val.csv")
    assert [r["id"] for r in rows] == ["case_a", "case_b", "case_c"]
    assert float(rows[0]["dice"]) == 1.0
    assert float(rows[1]["dice"]) == pytest.approx(0.5)  # 10x10 squares overlapping on 10x5
    assert float(rows[2]["dice"]) == 0.0

    summary = json.loads((tmp_path / "val_summary.json").read_text())
    assert summary["n_images"] == 3 and summary["resolution"] == "original"
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    assert engine.state.adaqat_metrics["metrics"]["dice"]["n"] == 3
    assert engine.state.metrics["mean_dice"] == pytest.approx(0.5)


def test_probabilities_fallback_ids_and_foreign_metric_kept(tmp_path):
    lbl = square(16, 2, 2, 6)
    engine = Engine(lambda eng, batch: batch)
    handler = SegmentationMetricsWriter(tmp_path)
    handler.attach(engine)
    handler.attach(engine)  # idempotent: no duplicated rows

    @engine.on(Events.STARTED)
    def _foreign(e):
        e.state.metrics["mean_dice"] = -1.0  # owned by another handler

    probs = lbl * 0.8 + 0.1
    engine.run([[item(None, probs, lbl), item(None, lbl, lbl)]], max_epochs=1)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["id"] for r in rows] == ["00000", "00001"]
    assert all(float(r["dice"]) == 1.0 for r in rows)
    assert engine.state.metrics["mean_dice"] == -1.0
    assert engine.state.metrics["mean_iou"] == 1.0


def test_multi_epoch_resets_rows(tmp_path):
    lbl = square(16, 2, 2, 6)
    handler = SegmentationMetricsWriter(tmp_path)
    run_engine(handler, [[item("x", lbl, lbl)], [item("y", lbl, lbl)]], max_epochs=3)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["id"] for r in rows] == ["x", "y"]
    assert json.loads((tmp_path / "metrics_summary.json").read_text())["epoch"] == 3


def test_low_res_scores_the_prediction_on_its_own_grid_against_the_resized_reference(tmp_path):
    """SAM's low-res prediction (32x32 here) is scored as it is; the 64x64 reference is resized to its grid."""
    lbl = square(64, 10, 10, 30)
    pred_low = square(32, 5, 5, 15)  # exactly the reference at half resolution
    pred_low[0, 5:20, 20] = 1  # plus a stripe the low-res grid really holds
    low = SegmentationMetricsWriter(tmp_path / "low", resolution="low_res")
    run_engine(low, [[item("s", pred_low, lbl)]])
    d_low = float(read_csv(tmp_path / "low" / "metrics.csv")[0]["dice"])
    expected = image_metrics(pred_low, square(32, 5, 5, 15))["dice"]  # computed on the 32x32 grid independently
    assert d_low == pytest.approx(expected) and d_low < 1.0
    assert json.loads((tmp_path / "low" / "metrics_summary.json").read_text())["resolution"] == "low_res"
    with pytest.raises(ValueError, match="differ in shape"):  # at the original resolution, grids must agree
        run_engine(SegmentationMetricsWriter(tmp_path / "orig"), [[item("s", pred_low, lbl)]])


def test_batched_dict_output_is_decollated(tmp_path):
    lbl = square(16, 2, 2, 6)
    batch = {
        "image": MetaTensor(torch.rand(2, 1, 16, 16), meta={"filename_or_obj": ["/d/p.png", "/d/q.nii.gz"]}),
        "pred": torch.stack([lbl, torch.zeros_like(lbl)]),
        "label": torch.stack([lbl, lbl]),
    }
    run_engine(SegmentationMetricsWriter(tmp_path), [batch])
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["id"], float(r["dice"])) for r in rows] == [("p", 1.0), ("q", 0.0)]


def test_rejects_bad_resolution(tmp_path):
    with pytest.raises(ValueError):
        SegmentationMetricsWriter(tmp_path, resolution="half")
