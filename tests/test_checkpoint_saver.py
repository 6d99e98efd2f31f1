"""Checkpoint files are never half written and never missing, even when the writer is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT
from ignite.engine import Engine
from scripts.training.checkpoint_saver import AtomicCheckpointSaver, ReplaceThenRemoveDiskSaver


class _Exploding:
    """A save_dict entry whose serialisation fails half way (like a full disk)."""

    def __reduce__(self):
        raise OSError("disk full")


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    saver = ReplaceThenRemoveDiskSaver(str(tmp_path), filename="checkpoint_final.pt")
    saver({"w": torch.ones(3)}, "ignored.pt")
    with pytest.raises(OSError):
        saver({"w": torch.zeros(3), "bad": _Exploding()}, "ignored.pt")
    assert os.listdir(tmp_path) == ["checkpoint_final.pt"]
    assert torch.equal(torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)["w"], torch.ones(3))


def test_interval_checkpoints_replace_before_they_remove(tmp_path):
    model = torch.nn.Linear(2, 2)
    seen: list[list[str]] = []
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(tmp_path), {"model": model}, file_prefix="ckpt", save_interval=1, n_saved=1).attach(engine)

    real_replace = os.replace

    def spy(src, dst):  # what is on disk the moment the new file lands
        seen.append(sorted(p for p in os.listdir(tmp_path) if p.endswith(".pt")))
        real_replace(src, dst)

    os.replace = spy
    try:
        engine.run([0], max_epochs=3)
    finally:
        os.replace = real_replace
    assert seen == [[], ["ckpt_model_epoch=1.pt"], ["ckpt_model_epoch=2.pt"]]  # never zero files once one existed
    assert sorted(os.listdir(tmp_path)) == ["ckpt_model_epoch=3.pt"]


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from scripts.training.checkpoint_saver import ReplaceThenRemoveDiskSaver
saver = ReplaceThenRemoveDiskSaver({out!r}, filename="checkpoint_final.pt")
i = 0
while True:
    saver({{"step": torch.tensor(i), "weights": torch.full((8_000_000,), float(i))}}, "x.pt")
    i += 1
    print(i, flush=True)
"""


def test_sigkill_while_writing_leaves_a_complete_checkpoint(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(BUNDLE_ROOT), out=str(tmp_path))],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "1"  # one complete file exists, the next write is under way
    time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    final = torch.load(Path(tmp_path) / "checkpoint_final.pt", weights_only=True)
    assert torch.all(final["weights"] == final["step"].float())  # whole and self-consistent
    assert [p for p in os.listdir(tmp_path) if p.endswith(".pt")] == ["checkpoint_final.pt"]
