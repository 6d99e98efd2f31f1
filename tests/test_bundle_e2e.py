"""All four bundle configs end to end on a few real JSRT images, plus the zoo's offline checks.

Tiny budgets (a handful of images, one or two epochs, the small SAM) keep this to about a minute;
the accuracy of the method is measured by the benchmark scripts, not here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT
from scripts.data.cxr_io import read_cxr, read_mask

from adaqat.bundle_runner import run_bundle

pytestmark = pytest.mark.e2e


def _common(data: Path) -> dict:
    # the machinery is under test, not the weights: adapters on a random encoder are asked for explicitly
    return {"dataset_dir": str(data), "limit": 6, "batch_size": 3, "split#by": "image", "num_workers": 0,
            "allow_random_encoder": True}


@pytest.fixture(scope="module")
def trained(jsrt_dir, tmp_path_factory) -> dict[str, Path]:
    """Stage 1 (2 epochs) then stage 2 (1 epoch) on 6 JSRT training images."""
    out = tmp_path_factory.mktemp("e2e")
    run_bundle(["train"], {**_common(jsrt_dir), "num_epochs": 2, "run_dir": str(out / "stage1"),
                           "export_path": str(out / "models" / "model.pt")})
    run_bundle(["train", "train_qat"], {**_common(jsrt_dir), "num_epochs": 1, "run_dir": str(out / "stage2"),
                                        "stage1_checkpoint": str(out / "stage1" / "model.pt"),
                                        "export_path": str(out / "models" / "model_int8.pt")})
    return {"out": out, "fp32": out / "models" / "model.pt", "int8": out / "models" / "model_int8.pt"}


def test_stage1_writes_best_resumable_checkpoints_rank_pattern_and_tensorboard(trained):
    stage1 = trained["out"] / "stage1"
    assert (stage1 / "model.pt").is_file() and (stage1 / "checkpoint_final.pt").is_file()
    resumable = torch.load(stage1 / "checkpoint_final.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "adalora"} <= set(resumable)
    assert resumable["trainer"]["iteration"] == 2 * resumable["trainer"]["epoch_length"]  # 2 epochs
    pattern = json.loads((stage1 / "rank_pattern.json").read_text())
    assert pattern["mode"] == "global" and len(pattern["history"]) == 2
    assert len(pattern["history"][-1]["ranks"]) == 4  # one qkv adapter per block of the small SAM
    assert any(p.name.startswith("events.out.tfevents") for p in (stage1 / "tensorboard").iterdir())
    # the best model is chosen among models at the final budget (target_r 16 x 4 matrices), never earlier
    best = torch.load(stage1 / "model.pt", weights_only=True)
    lambdas = [v for k, v in best.items() if k.endswith("lora_E.default")]
    assert len(lambdas) == 4 and sum(int((v != 0).sum()) for v in lambdas) == 16 * 4


def test_exported_fp32_model_is_tensors_only_with_adapters_merged(trained):
    content = torch.load(trained["fp32"], weights_only=True)
    assert content["format"] == "adaqat-sam-fp32" and content["arch"]["depth"] == 4
    state = content["model"]  # where MONAI's CheckpointLoader(load_dict={"model": ...}) looks
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert "sam.image_encoder.blocks.0.attn.qkv.weight" in state


def test_int8_artefact_is_int8_and_smaller(trained):
    artefact = torch.load(trained["int8"], weights_only=True)
    int8 = [k for k, v in artefact["state_dict"].items() if v.dtype == torch.int8]
    assert int8 and all("attn.qkv" not in k for k in int8)  # the paper's float list
    assert trained["int8"].stat().st_size < trained["fp32"].stat().st_size


@pytest.mark.parametrize("model", ["fp32", "int8"])
def test_evaluate_writes_per_image_metrics_and_summary(trained, jsrt_dir, model):
    out = trained["out"] / "eval"
    run_bundle(["train", "evaluate"], {**_common(jsrt_dir), "limit": 3, "model_path": str(trained[model]),
                                       "output_dir": str(out), "metrics_prefix": model}, workflow_type="infer")
    lines = (out / f"{model}.csv").read_text().splitlines()
    assert lines[0].split(",") == ["id", "dice", "iou", "nsd", "hd95", "assd"] and len(lines) == 4
    summary = json.loads((out / f"{model}_summary.json").read_text())
    assert summary["n_images"] == 3 and 0.0 <= summary["metrics"]["dice"]["mean"] <= 1.0


def test_inference_from_outside_the_bundle_folder_writes_masks_in_input_geometry(trained, jsrt_dir, tmp_path):
    images = sorted((jsrt_dir / "images").glob("*.png"))[:2]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for image in images:
        shutil.copy(image, inputs / image.name)
    out = tmp_path / "masks"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE_ROOT / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(inputs), "--output_dir", str(out),
           "--model_path", str(trained["int8"])]
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for image in images:
        mask = read_mask(out / f"{image.stem}_mask.png")
        assert mask.shape == read_cxr(image)[0].shape
        assert set(np.unique(mask)) <= {0, 1}


def test_bundle_properties_and_network_io_check(tmp_path):
    from monai.bundle import ConfigWorkflow, verify_net_in_out
    from scripts.model.segmenter import SamSegmenter

    model = tmp_path / "model.pt"  # infer workflows resolve the network, so a model file must exist
    torch.save(SamSegmenter("small").state_dict(), model)
    configs = BUNDLE_ROOT / "configs"
    for files, kind in ((["train.json"], "train"), (["train.json", "train_qat.json"], "train"), (["inference.json"], "infer"),
                        (["train.json", "evaluate.json"], "infer")):
        # the structure is checked, not the weights: stage 2 is not pointed at a stage-1 file here
        workflow = ConfigWorkflow(config_file=[str(configs / f) for f in files], meta_file=str(configs / "metadata.json"),
                                  workflow_type=kind, bundle_root=str(BUNDLE_ROOT), init_checkpoint=None,
                                  model_path=str(model), allow_random_encoder=True)
        workflow.initialize()
        assert not workflow.check_properties(), (files, workflow.check_properties())
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), bundle_root=str(BUNDLE_ROOT))


def test_inference_with_a_user_box_prompt(trained, jsrt_dir, tmp_path):
    image = sorted((jsrt_dir / "images").glob("*.png"))[0]
    out = tmp_path / "boxed"
    run_bundle(["inference"], {"dataset_dir": str(image), "output_dir": str(out), "model_path": str(trained["fp32"]),
                               "box": [20, 30, 200, 190], "prompt_mode": "box"}, workflow_type="infer")
    assert read_mask(out / f"{image.stem}_mask.png").shape == (224, 224)


def test_training_resumes_from_its_last_checkpoint(jsrt_dir, tmp_path):
    """A run stopped after epoch 2 of 3 resumes from its checkpoint and finishes the same schedule."""
    run_dir = tmp_path / "interrupted"
    train_run = json.loads((BUNDLE_ROOT / "configs" / "train.json").read_text())["run"]
    stop_at_2 = "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())"
    common = {**_common(jsrt_dir), "num_epochs": 3, "run_dir": str(run_dir), "export_path": str(run_dir / "model_fp32.pt")}
    run_bundle(["train"], {**common, "run": [stop_at_2, *train_run]})
    stopped = torch.load(run_dir / "checkpoint_final.pt", weights_only=True)
    assert stopped["trainer"]["iteration"] == 2 * stopped["trainer"]["epoch_length"]
    run_bundle(["train"], {**common, "resume_from": str(run_dir / "checkpoint_final.pt")})
    finished = torch.load(run_dir / "checkpoint_final.pt", weights_only=True)
    assert finished["trainer"]["iteration"] == 3 * stopped["trainer"]["epoch_length"]
    history = json.loads((run_dir / "rank_pattern.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # the allocator's record carried over


@pytest.mark.parametrize("stage", [1, 2])
def test_cli_export_reproduces_the_models_the_runs_exported(trained, jsrt_dir, tmp_path, stage):
    from adaqat.cli import main

    run_dir = trained["out"] / ("stage1" if stage == 1 else "stage2")
    out = tmp_path / f"exported_stage{stage}.pt"
    code = main(["export", str(run_dir / "model.pt"), "--stage", str(stage), "-o", str(out), "--data", str(jsrt_dir),
                 "--limit", "6", "--split-by", "image"])
    assert code == 0
    mine = torch.load(out, weights_only=True)
    reference = torch.load(trained["fp32" if stage == 1 else "int8"], weights_only=True)
    assert {k: v for k, v in mine.items() if k not in ("model", "state_dict")} == \
        {k: v for k, v in reference.items() if k not in ("model", "state_dict")}  # same header
    key = "state_dict" if stage == 2 else "model"
    mine, reference = mine[key], reference[key]
    assert set(mine) == set(reference)
    assert all(torch.equal(mine[k], reference[k]) for k in reference)
