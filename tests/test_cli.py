"""The `adaqat` command: every subcommand documents itself, errors are one clear line, stats hold the paper's counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ADAQAT = Path(sys.executable).with_name("adaqat")
COMMANDS = {
    "train": ["--data", "--checkpoint", "--preset", "--resume"],
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
    assert stats["total_params"] / stats["trainable"]["adalora"] >= 16.6
    assert stats["trainable"]["decoder"] < stats["trainable"]["lora"] <= stats["trainable"]["adalora"]
    assert round(stats["paper_formula_ratio"], 2) == 2.24
    sizes = stats["file_bytes"]
    assert sizes["fp32"] / sizes["int8_paper"] >= 2.15
    assert sizes["fp32"] / sizes["int8_all_linear"] >= 3.4
