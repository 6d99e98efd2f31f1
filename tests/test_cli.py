"""The `adaqat` command: every subcommand documents itself, errors are one clear line, stats hold the paper's counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ADAQAT = Path(sys.executable).with_name("adaqat")
COMMANDS = {
    "train": ["--data", "--checkpoint", "--preset", "--resume", "--image-size"],
    "qat": ["--stage1", "--per-tensor", "--keep-float", "--keep-float-file"],
    "evaluate": ["--model", "--compare", "--low-res", "--prompt"],
    "infer": ["INPUT", "--model", "OUTDIR"],
    "export": ["--stage", "checkpoint"],
    "stats": ["--arch", "--json"],
    "pipeline": ["--data", "--checkpoint", "--epochs"],
    "sensitivity": ["--model", "--size-ratio", "--split"],
    "compare": ["--protocol", "--foundation", "--quick"],
    "benchmark": ["--arch", "--routes", "--threads", "--keep-float"],
}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ADAQAT), *args], capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    for option in COMMANDS[command]:
        assert option in result.stdout


def test_the_paper_preset_refuses_a_random_encoder_with_one_line(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "cxr_ccby_512"
    result = run("train", "--preset", "paper", "--data", str(sample), "--limit", "4", "-o", str(tmp_path / "run"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "needs a pretrained SAM encoder" in result.stderr and "--checkpoint" in result.stderr


def test_bad_input_is_one_clear_line_without_traceback(tmp_path):
    missing = tmp_path / "no_such_image.png"
    result = run("infer", str(missing), "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "no_such_image.png" in result.stderr and "Traceback" not in result.stderr
    debug = run("--debug", "infer", str(missing), "-o", str(tmp_path / "out"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_stats_vit_b_matches_the_paper_and_measures_real_files():
    result = run("stats", "--arch", "vit_b", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout)
    assert stats["total_params"] == 93_735_472
    assert stats["parts"] == {"image_encoder": 89_670_912, "prompt_encoder": 6_220, "mask_decoder": 4_058_340}
    assert stats["trainable"]["decoder"] == 4_064_560 and stats["trainable"]["full"] == 93_735_472
    assert stats["trainable"]["adalora"] <= 5_650_000
    # the paper's 16.6x is image-encoder parameters over trainable ones (89.7M / 5.4M); both bases are reported
    assert stats["reduction_paper_basis"]["adalora"] == stats["parts"]["image_encoder"] / stats["trainable"]["adalora"]
    assert stats["reduction_paper_basis"]["adalora"] >= 16.6
    assert stats["reduction_vs_full"]["adalora"] == stats["total_params"] / stats["trainable"]["adalora"]
    assert stats["trainable"]["decoder"] < stats["trainable"]["lora"] <= stats["trainable"]["adalora"]
    assert round(stats["paper_formula_ratio"], 2) == 2.24
    sizes = stats["file_bytes"]
    assert sizes["fp32"] / sizes["int8_paper"] >= 2.15
    assert sizes["fp32"] / sizes["int8_all_linear"] >= 3.4


def test_infer_without_model_uses_the_shipped_int8_model(shipped_models, jsrt_dir, tmp_path):
    """A fresh clone segments with no training and no --model: the bundle's shipped INT8 model."""
    from scripts.data.cxr_io import read_mask
    from scripts.data.datasets import select_split

    item = select_split(jsrt_dir, "test", by="image")[0]
    result = run("infer", item["image"], "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    mask = read_mask(tmp_path / "out" / f"{Path(item['image']).stem}_mask.png") > 0
    reference = read_mask(item["label"]) > 0
    assert 2 * (mask & reference).sum() / (mask.sum() + reference.sum()) > 0.9


def test_a_bundle_without_its_models_says_where_they_come_from(tmp_path):
    from scripts.model_files.load import default_model_path

    with pytest.raises(FileNotFoundError, match=r"model_int8\.pt: model file not found.*large_files\.yml.*--model"):
        default_model_path(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    assert default_model_path(tmp_path) == str(tmp_path / "models" / "model.pt")
