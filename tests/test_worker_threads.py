"""Workers of one node share its cores (scripts/deploy/threads.py, scripts/data/archive.share_cores): under ``torchrun`` a machine-wide
``OMP_NUM_THREADS`` would give each worker every core, torch's pool and onnxruntime's alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import optional_module
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
    monkeypatch.setattr(archive, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    torch.set_num_threads(8)
    assert archive.share_cores() == 4 and torch.get_num_threads() == 4
    torch.set_num_threads(1)  # a user's explicit 1 stays
    assert archive.share_cores() == 4 and torch.get_num_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    torch.set_num_threads(3)
    assert archive.share_cores() is None and torch.get_num_threads() == 3


def test_onnxruntime_sessions_take_the_workers_share(monkeypatch, tmp_path: Path):
    optional_module("onnxruntime", "the sessions are onnxruntime's")
    from onnx import TensorProto, helper
    from scripts.deploy.onnx_files import open_session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "relu.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert open_session(path).get_session_options().intra_op_num_threads == 2
    assert open_session(path, threads=5).get_session_options().intra_op_num_threads == 5  # asked for: kept
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert open_session(path).get_session_options().intra_op_num_threads == 0  # onnxruntime's default: every core
