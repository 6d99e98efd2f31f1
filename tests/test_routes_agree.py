"""Every inference route of the shipped models gives eager FP32's masks on real JSRT images (issue 14: a faster
route is only a route if it segments the same)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import optional_module

from scripts.data.cxr_io import read_cxr
from scripts.data.datasets import select_split
from scripts.evaluation.metrics import dice_score
from scripts.model_files.load import load_model

optional_module("onnxruntime", "the onnxruntime routes")

ROUTES = {"eager_int8": ("int8", "eager"), "ort_fp32": ("fp32", "ort"), "ort_int8": ("int8", "ort"),
          "onnx_fp32": ("fp32", "onnx"), "onnx_int8": ("int8", "onnx")}


@pytest.mark.e2e
def test_each_route_agrees_with_eager_fp32_on_the_jsrt_test_split(shipped_models, jsrt_dir, tmp_path: Path) -> None:
    # Copies, so the FP32 graphs the ort/onnx routes build are cached here, not beside the shipped files.
    files = {key: Path(shutil.copy(shipped_models[key], tmp_path)) for key in ("fp32", "int8")}
    reference = load_model(files["fp32"], runtime="eager", prompt_mode="two_pass")
    networks = {name: load_model(files[kind], runtime=runtime, prompt_mode="two_pass")
                for name, (kind, runtime) in ROUTES.items()}
    dices: dict[str, list[float]] = {name: [] for name in ROUTES}
    for item in select_split(jsrt_dir, "test", by="image"):
        image, _ = read_cxr(item["image"])
        x = torch.from_numpy(np.asarray(image, np.float32))[None, None]
        with torch.no_grad():
            expected = (reference(x) > 0)[0, 0].numpy()
            assert expected.mean() > 0.1  # the reference does find lungs
            for name, network in networks.items():
                dices[name].append(dice_score((network(x) > 0)[0, 0].numpy(), expected))
    for name, values in dices.items():
        print(f"{name} vs eager_fp32 on {len(values)} JSRT test images: min Dice {min(values):.4f}, mean {np.mean(values):.4f}")
    assert len(dices["onnx_int8"]) == 37
    assert {name: min(values) for name, values in dices.items() if min(values) < 0.99} == {}
