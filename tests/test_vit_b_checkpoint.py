"""A ViT-B checkpoint in the official layout gets the paper's setting with no other flag: read as ViT-B, run at
its native 1024 px, through stage 1 (2 iterations), stage 2 (1 iteration), both exports, ``adaqat infer`` on a real
JSRT image with the default runtime and ``adaqat evaluate`` on 2 images. Random weights (none can be downloaded)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scripts.data.cxr_io import read_cxr, read_mask
from scripts.data.datasets import select_split
from scripts.model.sam import build_sam

pytestmark = pytest.mark.e2e
ADAQAT = Path(sys.executable).with_name("adaqat")


def _adaqat(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ADAQAT), *args], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-4000:])
    return result


def test_official_vit_b_checkpoint_runs_the_paper_setting_end_to_end(jsrt_dir, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.save(build_sam("vit_b").state_dict(), checkpoint)  # segment-anything's layout: no prefix, no header
    data = ["--data", str(jsrt_dir), "--split-by", "image", "--batch-size", "1", "--epochs", "1"]
    times = {}

    start = time.monotonic()
    stage1 = _adaqat("train", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "s1"), "--limit", "2", *data)
    times["stage1_2_iterations"] = time.monotonic() - start
    # ignite's epoch time counts the iterations only (validation runs after it): the time of one training step
    epoch = re.search(r"Epoch\[1\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", stage1.stdout + stage1.stderr)
    times["stage1_seconds_per_step"] = (int(epoch[1]) * 3600 + int(epoch[2]) * 60 + float(epoch[3])) / 2
    assert "position embeddings resampled" not in stage1.stdout + stage1.stderr  # native size: nothing resampled
    start = time.monotonic()
    _adaqat("qat", "--stage1", str(tmp_path / "s1" / "model.pt"), "-o", str(tmp_path / "s2"), "--limit", "1", *data)
    times["stage2_1_iteration"] = time.monotonic() - start

    fp32 = torch.load(tmp_path / "s1" / "model_fp32.pt", weights_only=True, mmap=True)
    int8 = torch.load(tmp_path / "s2" / "model_int8.pt", weights_only=True, mmap=True)
    for arch in (fp32["arch"], int8["meta"]["arch"]):
        assert (arch["embed_dim"], arch["depth"], arch["image_size"]) == (768, 12, 1024)
    assert fp32["model"]["sam.image_encoder.pos_embed"].shape == (1, 64, 64, 768)

    item = select_split(jsrt_dir, "test", by="image")[0]
    start = time.monotonic()
    _adaqat("infer", item["image"], "-o", str(tmp_path / "pred"), "--model", str(tmp_path / "s2" / "model_int8.pt"))
    times["infer_default_runtime"] = time.monotonic() - start
    assert list((tmp_path / "s2").glob("model_int8.encoder-1024.onnx"))  # the default runtime for ViT-B: onnxruntime
    mask = read_mask(tmp_path / "pred" / f"{Path(item['image']).stem}_mask.png")
    assert mask.shape == read_cxr(item["image"])[0].shape

    start = time.monotonic()
    _adaqat("evaluate", "--model", str(tmp_path / "s2" / "model_int8.pt"), "-o", str(tmp_path / "eval"), "--limit", "2",
            "--data", str(jsrt_dir), "--split-by", "image")
    times["evaluate_2_images"] = time.monotonic() - start
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["n_images"] == 2 and summary["resolution"] == "original"
    print("ViT-B end to end, seconds:", json.dumps({k: round(v, 1) for k, v in times.items()}))
