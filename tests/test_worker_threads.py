"""Workers of one node share its cores (scripts/deploy/threads.py, scripts/data/archive.share_cores): under
``torchrun`` a machine-wide ``OMP_NUM_THREADS`` would give each worker every core (onnxruntime's share:
tests/test_onnx_session.py)."""

from __future__ import annotations

import pytest
import torch
from scripts.data import archive
from scripts.deploy import threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("local_world, cores, expected", [(None, 8, None), ("1", 8, None), ("2", 8, 4), ("3", 8, 2),
                                                          ("4", 2, 1), ("junk", 8, None)])
def test_each_worker_gets_its_share_of_the_cores(monkeypatch, local_world, cores, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert threads.worker_threads() == expected


def test_share_cores_lowers_torch_threads_and_never_raises_them(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    torch.set_num_threads(8)
    assert archive.share_cores() == 4 and torch.get_num_threads() == 4
    torch.set_num_threads(1)  # a user's explicit 1 stays
    assert archive.share_cores() == 4 and torch.get_num_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    torch.set_num_threads(3)
    assert archive.share_cores() is None and torch.get_num_threads() == 3
