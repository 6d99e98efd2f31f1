"""Metric conventions on hand-computable masks, the paired test, and the CSV/JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scripts.evaluation.metrics import (
    compare_prediction_sets,
    image_metrics,
    read_metrics_csv,
    summarise,
    wilcoxon_paired,
    write_metrics,
)

H = W = 64


def square(r0: int, c0: int, size: int = 20) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[r0 : r0 + size, c0 : c0 + size] = 1
    return m


def test_overlap_dice_iou_exact():
    # 20x20 squares shifted 5 columns: overlap 20*15 = 300 of 400 each.
    m = image_metrics(square(10, 10), square(10, 15))
    assert m["dice"] == pytest.approx(2 * 300 / 800)
    assert m["iou"] == pytest.approx(300 / 500)


def test_shift_distances_and_nsd():
    one = image_metrics(square(10, 10), square(10, 11), nsd_tolerance_px=2.0)
    assert one["nsd"] == pytest.approx(1.0)
    assert one["hd95"] == pytest.approx(1.0)
    # 38 of each square's 76 edge pixels are 1 px away, the rest 0 -> 0.5
    assert one["assd"] == pytest.approx(0.5)

    five = image_metrics(square(10, 10), square(10, 15), nsd_tolerance_px=2.0)
    assert five["nsd"] < 1.0
    assert five["hd95"] == pytest.approx(5.0)
    # per direction: left/right edges 20*5 + 2*(1+2+3+4) + ramp on the far edge = 190 / 76
    assert five["assd"] == pytest.approx(2.5)


def test_identical_masks_and_tensor_input():
    m = image_metrics(torch.from_numpy(square(5, 5))[None].float(), square(5, 5))
    assert m == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}


def test_probabilities_thresholded_at_half():
    prob = square(10, 10).astype(np.float32) * 0.7 + 0.2  # 0.9 inside, 0.2 outside
    assert image_metrics(prob, square(10, 10))["dice"] == pytest.approx(1.0)


def test_empty_cases():
    empty = np.zeros((H, W))
    assert image_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    diag = math.hypot(H, W)
    for p, g in ((empty, square(1, 1)), (square(1, 1), empty)):
        m = image_metrics(p, g)
        assert (m["dice"], m["iou"], m["nsd"]) == (0.0, 0.0, 0.0)
        assert m["hd95"] == pytest.approx(diag) and m["assd"] == pytest.approx(diag)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        image_metrics(np.zeros((8, 8)), np.zeros((8, 9)))


def test_summarise_nan_safe():
    rows = [{"dice": 0.8}, {"dice": 1.0}, {"dice": float("nan")}, {"dice": 0.9}]
    s = summarise(rows, keys=("dice",))["dice"]
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.9) and s["median"] == pytest.approx(0.9)
    assert s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"]) == (0.8, 1.0)
    assert summarise([{"dice": float("nan")}], keys=("dice",))["dice"]["n"] == 0


def test_wilcoxon_shifted_and_identical():
    rng = np.random.default_rng(0)
    a = {f"img{i}": float(v) for i, v in enumerate(rng.normal(0.9, 0.02, 20))}
    b = {k: v - 0.01 - float(rng.normal(0, 0.003)) for k, v in a.items()}
    res = wilcoxon_paired(a, b, "A", "B")
    assert res["p_value"] < 0.05 and res["n"] == 20
    assert res["median_difference"] > 0 and res["mean_difference"] > 0
    assert (res["name_a"], res["name_b"]) == ("A", "B")

    same = wilcoxon_paired(a, dict(a), "A", "A2")
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0


def test_wilcoxon_pairs_by_id_and_rejects_disjoint():
    res = wilcoxon_paired({"x": 1.0, "y": 2.0, "z": 3.0}, {"z": 2.0, "y": 1.5, "w": 9.0})
    assert res["n"] == 2 and res["n_only_a"] == 1 and res["n_only_b"] == 1
    assert res["mean_difference"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        wilcoxon_paired({"x": 1.0}, {"y": 1.0})
    with pytest.raises(ValueError):
        wilcoxon_paired({"x": 1.0, "y": 2.0}, {"x": 1.0})


def test_write_read_and_compare(tmp_path, capsys):
    rows_a = [{"id": f"c{i}", **image_metrics(square(10, 10), square(10, 10 + i % 3))} for i in range(6)]
    rows_b = [{"id": f"c{i}", **image_metrics(square(10, 10), square(10, 14 + i % 3))} for i in range(6)]
    summary = write_metrics(rows_a, tmp_path / "a.csv", tmp_path / "a.json", extra={"model": "A"})
    write_metrics(rows_b, tmp_path / "b.csv", tmp_path / "b.json")
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "id,dice,iou,nsd,hd95,assd"
    back = read_metrics_csv(tmp_path / "a.csv")
    assert list(back) == [f"c{i}" for i in range(6)]
    assert back["c1"]["dice"] == pytest.approx(rows_a[1]["dice"])
    on_disk = json.loads((tmp_path / "a.json").read_text())
    assert on_disk["model"] == "A" and on_disk["n_images"] == 6
    assert on_disk["metrics"]["dice"]["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    assert not list(tmp_path.glob(".*"))  # no temp files left behind

    res = compare_prediction_sets(tmp_path / "a.csv", tmp_path / "b.csv", metric="dice")
    assert res["metric"] == "dice" and res["n"] == 6 and res["mean_difference"] > 0
    assert res["mean_a"] > res["mean_b"]

    from adaqat.cli import main  # `adaqat evaluate --compare` is the command that prints it

    assert main(["evaluate", "--compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--metric", "hd95"]) == 0
    assert json.loads(capsys.readouterr().out)["metric"] == "hd95"


def test_atomic_writes_leave_no_partial_file_and_ordinary_permissions(tmp_path):
    from scripts.atomic import atomic_path, atomic_write_text

    target = tmp_path / "report.json"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert target.stat().st_mode & 0o044  # group/other can read, unlike mkstemp's 0600
