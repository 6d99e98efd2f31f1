"""Two processes on the CPU (gloo) train through multi_gpu_train.json and end with identical adapters.

``torchrun --standalone --nproc_per_node 2`` runs stage 1 on 8 JSRT training images (4 per rank),
2 epochs, AdaLoRA masking every step, so the rank budget moves inside the run (128 -> 64 triplets).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from process_tree import run_tree

pytestmark = pytest.mark.e2e


def test_two_gloo_ranks_end_with_identical_masks_and_weights(jsrt_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = {"dataset_dir": str(jsrt_dir), "limit": 8, "batch_size": 2, "split#by": "image", "num_workers": 0,
                 "image_size": 128, "num_epochs": 2, "adapter#delta_t": 1, "run_dir": str(run_dir),
                 "allow_random_encoder": True,  # rank agreement is under test, not the weights
                 "export_path": str(run_dir / "model_fp32.pt")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"configs": ["train", "multi_gpu_train"], "overrides": overrides,
                                "summary": str(tmp_path / "rank{rank}.pt")}))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_tree([torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "tests" / "bundle_child.py"), str(spec)],
                      timeout=600, env=env)  # past the timeout, torchrun's workers are killed too
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["iteration"] == rank1["iteration"] == 2 * 2  # each rank saw half the 8 images: 2 steps per epoch
    assert rank0["rank_pattern"] == rank1["rank_pattern"]
    assert sum(sum(mask) for mask in rank0["rank_pattern"].values()) == 16 * 4  # final budget: target_r x 4 matrices
    for name in rank0["trainable"]:
        assert torch.equal(rank0["trainable"][name], rank1["trainable"][name]), name
    lambdas = [v for k, v in rank0["adapters"].items() if k.endswith("lora_E.default")]
    assert len(lambdas) == 4 and sum(int((v != 0).sum()) for v in lambdas) == 16 * 4  # masks applied: 128 -> 64 triplets
    assert rank0["val_dice"] == rank1["val_dice"]

    # rank 0 alone wrote the run's files; the resumable checkpoint holds the unwrapped network
    checkpoint = torch.load(run_dir / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert checkpoint["trainer"]["epoch_length"] == 2
    assert (run_dir / "model_fp32.pt").is_file() and (run_dir / "model.pt").is_file()
    assert len(json.loads((run_dir / "rank_pattern.json").read_text())["history"]) == 2
    writers = {p.name.split(".")[-2] for p in (run_dir / "tensorboard").glob("events.out.tfevents*")}  # ...<host>.<pid>.<n>
    assert len(writers) == 1  # one process wrote TensorBoard events
