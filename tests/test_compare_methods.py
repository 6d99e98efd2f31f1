"""`adaqat compare --quick` on both protocols (real JSRT and CC BY data): every method, prompt, table and plot.

CI's reduced form of the study: a 1-epoch foundation on 6 JSRT images, 1 epoch per stage, 6 images per
split, no CPU timing (timing has its own tests on the bench branch). What it checks could fail: a row
missing or non-finite, parameter counts in the wrong order, an INT8 file not smaller than its FP32
parent, p-values outside [0, 1] or paired on different images, a blank or missing plot, a method
missing from the Markdown, and a rerun retraining what was done.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts.evaluation.metrics import METRIC_KEYS, read_metrics_csv

from adaqat.cli import main
from adaqat.study.methods import METHODS

PLOTS = ("dice_boxplots", "adalora_ranks", "curves", "overlays", "int8_vs_fp32")


@pytest.fixture(scope="module")
def quick_study(jsrt_dir, sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    args = ["compare", "--protocol", "both", "--quick", "--no-perf", "--out", str(out),
            "--jsrt-data", str(jsrt_dir), "--transfer-data", str(sample_dir)]
    assert main(args) == 0
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "comparison.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e
def test_every_method_and_prompt_has_finite_metrics(quick_study):
    rows = _rows(quick_study)
    for protocol in ("jsrt", "transfer"):
        got = {(r["method"], r["prompt"]) for r in rows if r["protocol"] == protocol}
        want = {(m.name, {"box": "gt_box"}.get(p, p)) for m in METHODS for p in m.prompts}
        assert got == want, f"{protocol}: missing {want - got}"
    for r in rows:
        assert int(r["n"]) == 6
        for m in METRIC_KEYS:
            assert math.isfinite(float(r[f"{m}_mean"])) and math.isfinite(float(r[f"{m}_std"])), (r["method"], m)
        assert 0.0 <= float(r["dice_mean"]) <= 1.0


@pytest.mark.e2e
def test_parameters_sizes_and_p_values(quick_study):
    for protocol in ("jsrt", "transfer"):
        rows = {r["method"]: r for r in _rows(quick_study) if r["protocol"] == protocol}
        trainable = {k: int(r["trainable"]) for k, r in rows.items()}
        assert trainable["full_ft"] > trainable["lora"] > trainable["decoder_ft"] > 0
        assert trainable["adalora"] < trainable["full_ft"] and trainable["ptq"] == 0
        for name in ("adalora_qat", "adalora_qat_paper", "ptq"):
            assert int(rows[name]["file_bytes"]) < int(rows[name]["fp32_file_bytes"]), name
            assert int(rows[name]["fp32_file_bytes"]) == int(rows["adalora"]["file_bytes"])
    for r in _rows(quick_study):
        for key in ("p_vs_decoder_ft", "p_vs_fp32_parent"):
            if r[key]:
                assert 0.0 <= float(r[key]) <= 1.0
        assert bool(r["p_vs_decoder_ft"]) == (r["method"] != "decoder_ft")
        assert bool(r["p_vs_fp32_parent"]) == (r["method"] in ("adalora_qat", "adalora_qat_paper", "ptq"))


@pytest.mark.e2e
def test_tests_pair_the_same_test_images(quick_study):
    for protocol in ("jsrt", "transfer"):
        root = quick_study / protocol
        reference = set(read_metrics_csv(root / "decoder_ft" / "eval" / "two_pass.csv"))
        for m in METHODS:
            for prompt in m.prompts:
                assert set(read_metrics_csv(root / m.name / "eval" / f"{prompt}.csv")) == reference, (protocol, m.name, prompt)


@pytest.mark.e2e
def test_plots_are_real_images(quick_study):
    for protocol in ("jsrt", "transfer"):
        for name in PLOTS:
            path = quick_study / protocol / "plots" / f"{name}.png"
            assert path.stat().st_size > 10_000, path
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) >= 200, (path, image.size)
                pixels = np.asarray(image.convert("L"), dtype=float)
            assert pixels.std() > 5, f"{path} looks blank"


@pytest.mark.e2e
def test_markdown_lists_every_method_and_a_rerun_resumes(quick_study):
    md = (quick_study / "results.md").read_text()
    for title in ("In-domain: JSRT", "Transfer:"):
        section = md.split(title, 1)[1]
        for m in METHODS:
            assert f"| {m.label} |" in section, (title, m.label)
    assert "adaqat compare --protocol both --quick" in md
    records = sorted((quick_study / "transfer").glob("*/method.json"))
    assert len(records) == len(METHODS)
    before = {p: p.stat().st_mtime_ns for p in records}
    assert main(["compare", "--protocol", "transfer", "--quick", "--no-perf", "--out", str(quick_study),
                 "--transfer-data", str(quick_study.parent)]) != 0  # a wrong data folder is refused ...
    assert main(["compare", "--protocol", "transfer", "--quick", "--no-perf", "--out", str(quick_study)]) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == before  # ... and a rerun trains nothing again
