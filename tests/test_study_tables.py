"""The comparison tables from synthetic per-image CSVs: pairing by id, missing images, rows, CSV and Markdown."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import wilcoxon
from scripts.evaluation.metrics import compare_prediction_sets, write_metrics

from adaqat.study.methods import METHODS
from adaqat.study.tables import COLUMNS, criteria, protocol_rows, write_results

IDS = [f"img{i:02d}" for i in range(12)]


def _rows(dice: dict[str, float]) -> list[dict]:
    return [{"id": k, "dice": v, "iou": v * 0.9, "nsd": v * 0.8, "hd95": 10 * (1 - v), "assd": 3 * (1 - v)} for k, v in dice.items()]


def _write_eval(folder, prompt: str, dice: dict[str, float]) -> None:
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    write_metrics(_rows(dice), folder / "eval" / f"{prompt}.csv", folder / "eval" / f"{prompt}_summary.json")


def test_paired_dice_pairs_by_image_id_not_by_row_order(tmp_path):
    rng = np.random.default_rng(0)
    a = {k: float(v) for k, v in zip(IDS, rng.uniform(0.8, 0.95, len(IDS)))}
    b = {k: a[k] - float(d) for k, d in zip(IDS, rng.uniform(-0.01, 0.03, len(IDS)))}
    write_metrics(_rows(a), tmp_path / "a.csv", tmp_path / "a.json")
    write_metrics(_rows(dict(reversed(list(b.items())))), tmp_path / "b.csv", tmp_path / "b.json")  # other row order
    result = compare_prediction_sets(tmp_path / "a.csv", tmp_path / "b.csv", "dice", "a", "b")
    expected = wilcoxon([a[k] for k in IDS], [b[k] for k in IDS])
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["ids"] == sorted(IDS) and result["n"] == len(IDS)
    assert result["mean_difference"] == pytest.approx(np.mean([a[k] - b[k] for k in IDS]))
    by_row_order = wilcoxon([a[k] for k in IDS], [b[k] for k in reversed(IDS)])
    assert result["p_value"] != pytest.approx(by_row_order.pvalue)


def test_paired_dice_names_the_missing_images_and_the_file(tmp_path):
    a = {k: 0.9 for k in IDS}
    b = {k: 0.9 for k in IDS if k not in ("img03", "img07")}
    write_metrics(_rows(a), tmp_path / "a.csv", tmp_path / "a.json")
    write_metrics(_rows(b), tmp_path / "b.csv", tmp_path / "b.json")
    with pytest.raises(ValueError, match=r"b\.csv lacks \['img03', 'img07'\]"):
        compare_prediction_sets(tmp_path / "a.csv", tmp_path / "b.csv", "dice", "a", "b")


def _synthetic_protocol(root, int8_shift: float = 0.0, int8_bytes: int = 400, full_trainable: int = 10_000):
    """Every method of the study with eval CSVs, model files of chosen sizes and method records."""
    rng = np.random.default_rng(1)
    base = {k: float(v) for k, v in zip(IDS, rng.uniform(0.85, 0.95, len(IDS)))}
    trainable = {"full_ft": full_trainable, "decoder_ft": 300, "lora": 350, "adalora": 400, "adalora_qat": 380,
                 "adalora_qat_paper": 400, "ptq": 0, "unet": 2000}
    records = {}
    dice = {}
    for i, m in enumerate(METHODS):
        folder = root / m.name
        folder.mkdir(parents=True)
        model = folder / "model.pt"
        model.write_bytes(b"x" * (int8_bytes if m.precision == "int8" else 1000))
        # continuous per-image noise (no ties), so scipy's exact Wilcoxon applies
        noise = rng.normal(0, 0.002, len(IDS))
        if m.name == "adalora_qat":
            dice[m.name] = {k: dice["adalora"][k] - int8_shift + n / 4 for k, n in zip(IDS, noise)}
        else:
            dice[m.name] = {k: base[k] - 0.002 * i + n for k, n in zip(IDS, noise)}
        for prompt in m.prompts:
            _write_eval(folder, prompt, dice[m.name])
        records[m.name] = {"model": str(model), "trainable": trainable[m.name], "seconds": 10.0 + i, "epochs": 3,
                           "qat_epochs": 2 if m.parent else None, "perf": {"latency_s": 0.1, "images_per_s": 10.0, "peak_rss_mib": 500.0}}
    return records


def test_rows_cover_every_method_and_prompt_with_the_right_comparisons(tmp_path):
    records = _synthetic_protocol(tmp_path)
    rows = protocol_rows("transfer", tmp_path, list(METHODS), records)
    keys = {(r["method"], r["prompt"]) for r in rows}
    expected = {(m.name, {"box": "gt_box"}.get(p, p)) for m in METHODS for p in m.prompts}
    assert keys == expected and len(rows) == len(expected)
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert (r["p_vs_decoder_ft"] is None) == (r["method"] == "decoder_ft")
        assert (r["p_vs_fp32_parent"] is None) == (r["method"] not in ("adalora_qat", "adalora_qat_paper", "ptq"))
        if r["method"] in ("adalora_qat", "ptq"):
            assert r["size_ratio_vs_fp32"] == pytest.approx(1000 / 400) and r["file_bytes"] == 400
    unet = next(r for r in rows if r["method"] == "unet")
    assert unet["prompt"] == "none" and 0 <= unet["p_vs_decoder_ft"] <= 1 and unet["n_paired"] == len(IDS)
    full = next(r for r in rows if r["method"] == "full_ft")
    assert full["reduction_vs_full"] == 1.0 and full["latency_ms"] == pytest.approx(100.0)


def test_criteria_pass_and_fail(tmp_path):
    ok = _synthetic_protocol(tmp_path / "ok", int8_shift=0.0, int8_bytes=400, full_trainable=10_000)
    check = criteria(protocol_rows("jsrt", tmp_path / "ok", list(METHODS), ok), ok)
    assert all(c["pass"] for c in check["int8_vs_fp32"].values())
    assert check["param_reduction"]["value"] == pytest.approx(10_000 / 400) and check["param_reduction"]["pass"]
    assert check["size_ratio"]["pass"]
    bad = _synthetic_protocol(tmp_path / "bad", int8_shift=0.03, int8_bytes=500, full_trainable=4_000)
    check = criteria(protocol_rows("jsrt", tmp_path / "bad", list(METHODS), bad), bad)
    assert not any(c["pass"] for c in check["int8_vs_fp32"].values())  # 3 points worse on every image: p < 0.05
    assert not check["param_reduction"]["pass"] and not check["size_ratio"]["pass"]
    better = _synthetic_protocol(tmp_path / "better", int8_shift=-0.03)  # significantly *better* INT8 is not worse
    check = criteria(protocol_rows("jsrt", tmp_path / "better", list(METHODS), better), better)
    assert all(c["pass"] and c["p"] < 0.05 and c["diff_points"] > 2 for c in check["int8_vs_fp32"].values())


def test_results_files_list_every_method_and_row(tmp_path):
    records = _synthetic_protocol(tmp_path / "transfer")
    meta = {"data": "/data/x", "split_by": "patient", "methods": records,
            "keep_float_choice": {"keep_float": ["*a*", "*lora_*"], "predicted_ratio": 2.5}}
    md_path = write_results(tmp_path, {"transfer": meta}, {"command": "adaqat compare --out X", "epochs": 3, "qat_epochs": 2},
                            {"cpu": "test cpu", "cpu_count": 2})
    md = md_path.read_text()
    for m in METHODS:
        assert f"| {m.label} |" in md
    assert "| gt_box |" in md and "| none |" in md and "adaqat compare --out X" in md and "`*a* *lora_*`" in md
    assert "**pass**" in md or "**FAIL**" in md
    with open(tmp_path / "comparison.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == sum(len(m.prompts) for m in METHODS)
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert len(saved["rows"]) == len(table) and "transfer" in saved["criteria"]

