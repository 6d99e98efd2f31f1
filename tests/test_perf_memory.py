"""adaqat.perf's peak memory is the measured process's own (the study measures models from a large process)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import BUNDLE_ROOT


def test_peak_memory_of_a_child_is_its_own_not_its_parents(tmp_path):
    """Linux carries a parent's ru_maxrss into a child across fork + exec; perf must report the child's own peak."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from adaqat.perf import _peak_rss_mib; print(_peak_rss_mib())")
    bundle = str(BUNDLE_ROOT)
    ballast = np.ones(400 * 2**20 // 8)  # ~400 MiB held by this (parent) process
    ballast += 1
    child = float(subprocess.run([sys.executable, "-c", code, bundle], capture_output=True, text=True, check=True).stdout)
    assert child < 300, f"child reported {child:.0f} MiB: the parent's peak, not its own"


def test_a_unet_baseline_file_is_measured_like_a_sam_one(tmp_path):
    """The study measures its prompt-free UNet with the same child process as the SAM models (no .sam there)."""
    from scripts.model.unet import ResizingUNet
    from scripts.model_files.export import export_unet

    from adaqat.perf import measure_in_child

    path = export_unet(ResizingUNet(image_size=64, channels=(4, 8), strides=(2,)), None, tmp_path / "unet.pt")
    result = measure_in_child(str(path), repeats=2, warmup=1, threads=1)
    assert result["image_size"] == 64 and len(result["latency_all_s"]) == 2
    assert result["latency_s"] > 0 and result["peak_rss_mib"] > 0 and "onnx_bytes" not in result
    assert result["file_bytes"] == path.stat().st_size
