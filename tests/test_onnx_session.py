"""The onnxruntime sessions the engine opens: no arena and no memory pattern, so resident memory stays at one run's
peak instead of growing with every run (measured on ViT-B at 1024: 3.5 -> 6.7 GB over three runs with them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import optional_module

optional_module("onnxruntime", "the sessions are onnxruntime's")


def _relu_model(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "relu.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_sessions_run_without_arena_or_memory_pattern(tmp_path: Path) -> None:
    from scripts.deploy.onnx_files import open_session

    session = open_session(_relu_model(tmp_path), threads=1)
    options = session.get_session_options()
    assert options.enable_cpu_mem_arena is False and options.enable_mem_pattern is False
    assert options.intra_op_num_threads == 1 and options.enable_profiling is False
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))


def test_sessions_take_a_torchrun_workers_share_of_the_cores(monkeypatch, tmp_path: Path) -> None:
    """Under torchrun a machine-wide ``OMP_NUM_THREADS`` does not reach onnxruntime: its pool takes every core (and
    spins) unless the session asks for the worker's share (scripts/deploy/threads.py)."""
    from scripts.deploy import threads
    from scripts.deploy.onnx_files import open_session

    path = _relu_model(tmp_path)
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert open_session(path).get_session_options().intra_op_num_threads == 2
    assert open_session(path, threads=5).get_session_options().intra_op_num_threads == 5  # asked for: kept
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert open_session(path).get_session_options().intra_op_num_threads == 0  # onnxruntime's default: every core
