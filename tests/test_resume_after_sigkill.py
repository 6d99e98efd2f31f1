"""A training run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends as if never killed.

Three runs of the same 3-epoch stage-1 config on 6 JSRT images (2 per batch, AdaLoRA masking every 2
steps): uninterrupted; killed by the test during epoch 2 (after epoch 1's checkpoint); resumed from that
checkpoint. Checkpoints are per epoch, so the resumed run repeats epoch 2 from its start, with the
generators as they were when epoch 1 ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT, REPO

pytestmark = pytest.mark.e2e
CHILD = REPO / "tests" / "bundle_child.py"


def _spec(tmp: Path, name: str, overrides: dict) -> Path:
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps({"configs": ["train"], "overrides": overrides, "summary": str(tmp / f"{name}.pt")}))
    return spec


def _run(spec: Path) -> None:
    result = subprocess.run([sys.executable, str(CHILD), str(spec)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(jsrt_dir, tmp_path):
    def overrides(run_dir: Path) -> dict:
        return {"dataset_dir": str(jsrt_dir), "limit": 6, "batch_size": 2, "split#by": "image", "num_workers": 0,
                "image_size": 128, "num_epochs": 3, "adapter#delta_t": 2, "run_dir": str(run_dir),
                "allow_random_encoder": True,  # resuming is under test, not the weights
                "export_path": str(run_dir / "model_fp32.pt")}

    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    _run(_spec(tmp_path, "reference", overrides(reference_dir)))

    # The killed run parks in epoch 2's second iteration and says so; the test then SIGKILLs it.
    marker = tmp_path / "in_epoch_2"
    park = ("$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=@iterations_per_epoch + 2), "
            f"lambda e: (open({str(marker)!r}, 'w').close(), sys.modules['time'].sleep(600)))")
    train_run = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())["run"]
    # the hook goes just before training starts: every object is then built in the same order as in the
    # reference run (the order decides what the seeded generators give the network and the loaders)
    start = train_run.index("$@train#trainer.run()")
    killed_run = [*train_run[:start], park, *train_run[start:]]
    child = subprocess.Popen([sys.executable, str(CHILD), str(_spec(tmp_path, "killed", {**overrides(killed_dir), "run": killed_run}))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached epoch 2"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    child.stderr.close()

    # Nothing half-written: every .pt is complete and loads with weights_only; epoch 1's checkpoint is the last one.
    checkpoints = sorted(killed_dir.glob("*.pt"))
    for path in checkpoints:
        torch.load(path, weights_only=True)
    assert [p.name for p in checkpoints] == ["checkpoint_checkpoint_epoch=1.pt", "model.pt"]
    last = torch.load(killed_dir / "checkpoint_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "adalora", "rng", "selection"} <= set(last)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"] == 3

    _run(_spec(tmp_path, "resumed", {**overrides(killed_dir), "resume_from": str(killed_dir / "checkpoint_checkpoint_epoch=1.pt")}))

    reference, resumed = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("reference", "resumed"))
    print({k: (reference[k], resumed[k]) for k in ("iteration", "loss", "val_dice", "best_dice")})
    assert resumed["iteration"] == reference["iteration"] == 9 and resumed["epoch"] == 3
    assert resumed["loss"] == pytest.approx(reference["loss"], rel=1e-5, abs=1e-6)
    assert resumed["val_dice"] == pytest.approx(reference["val_dice"], abs=1e-6)
    assert resumed["best_dice"] == pytest.approx(reference["best_dice"], abs=1e-6)
    differences = {k: float((reference["adapters"][k] - resumed["adapters"][k]).abs().max()) for k in reference["adapters"]}
    print("max |adapter difference|:", max(differences.values()))
    assert max(differences.values()) < 1e-5
    # the AdaLoRA rank pattern (non-zero singular values) is the same, and it moved away from the initial 32 per matrix
    lambdas = sorted(k for k in reference["adapters"] if k.endswith("lora_E.default"))
    assert [(reference["adapters"][k] != 0).sum().item() for k in lambdas] == [(resumed["adapters"][k] != 0).sum().item() for k in lambdas]
    assert all(torch.equal(reference["adapters"][k] != 0, resumed["adapters"][k] != 0) for k in lambdas)
    assert sum((reference["adapters"][k] != 0).sum().item() for k in lambdas) < 32 * len(lambdas)
    history = json.loads((killed_dir / "rank_pattern.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history == json.loads((reference_dir / "rank_pattern.json").read_text())["history"]
