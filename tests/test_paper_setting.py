"""Stage 2 trains with the numerics the INT8 model runs with; the training loop does what its config says;
``--low-res`` is the paper's metric setting. Real JSRT images, the shipped small SAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scripts.data.cxr_io import read_cxr, read_mask
from scripts.data.datasets import select_split
from scripts.evaluation.metrics import dice_score, read_metrics_csv
from scripts.model_files.export import export_int8
from scripts.model_files.load import load_model

from adaqat.bundle_runner import load_workflow, run_bundle

pytestmark = pytest.mark.e2e
N_IMAGES = 8


def _stage2_network(stage1_checkpoint: Path, jsrt_dir: Path, tmp: Path, activations: str | None) -> torch.nn.Module:
    """The stage-2 network exactly as ``train_qat.json`` builds it from the stage-1 checkpoint (before training)."""
    workflow = load_workflow(["train", "train_qat"], {
        "dataset_dir": str(jsrt_dir), "split#by": "image", "limit": 2, "run_dir": str(tmp / "stage2"),
        "stage1_checkpoint": str(stage1_checkpoint), "qat#activations": activations})
    return workflow.parser.get_parsed_content("network").eval()


def _logits(network: torch.nn.Module, images: list[np.ndarray]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [network(torch.from_numpy(img)[None, None]) for img in images]


def _agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    """(smallest per-image Dice between the masks, largest |logit difference|)."""
    dice = min(dice_score(a[0, 0] > 0, b[0, 0] > 0) for a, b in zip(reference, other))
    return dice, max(float((a - b).abs().max()) for a, b in zip(reference, other))


def test_stage2_simulates_what_both_int8_runtimes_execute(stage1_checkpoint, jsrt_dir, tmp_path):
    images = [read_cxr(item["image"])[0] for item in select_split(jsrt_dir, "test", by="image")[:N_IMAGES]]
    results = {}
    for activations in ("dynamic_per_tensor", None):
        network = _stage2_network(stage1_checkpoint, jsrt_dir, tmp_path / str(activations), activations)
        artefact = export_int8(network, None, tmp_path / f"int8_{activations}.pt")
        simulated = _logits(network, images)
        for runtime in ("eager", "ort"):
            results[activations, runtime] = _agreement(simulated, _logits(load_model(artefact, runtime=runtime), images))
    print({f"{a} vs {r}": {"min_dice": d, "max_abs_logit_diff": m} for (a, r), (d, m) in results.items()})
    for runtime in ("eager", "ort"):
        dice, diff = results["dynamic_per_tensor", runtime]
        assert dice >= 0.999, (runtime, dice)
        # switched off, the simulation misses the activation rounding the runtime applies
        assert diff < results[None, runtime][1], (runtime, diff, results[None, runtime][1])


def test_early_stopping_fires_with_the_default_schedule(shipped_models, jsrt_dir, tmp_path):
    """Nothing learns (learning rate 0), so once AdaLoRA's budget is final the default patience runs out before
    the last epoch. Defaults: 25 epochs, budget final at 60 % of the steps, patience 5."""
    workflow = run_bundle(["train"], {
        "dataset_dir": str(jsrt_dir), "split#by": "image", "limit": 4, "run_dir": str(tmp_path),
        "export_path": str(tmp_path / "model_fp32.pt"), "sam_checkpoint": str(shipped_models["foundation"]),
        "lr": {"adapter": 0.0, "decoder": 0.0, "encoder": 0.0, "default": 0.0}})
    parsed = workflow.parser.get_parsed_content
    trainer, patience = parsed("train#trainer"), parsed("early_stop_patience")
    epochs, steps = parsed("num_epochs"), parsed("total_steps")
    assert parsed("iterations_per_epoch") == len(parsed("train#dataloader")) == trainer.state.epoch_length
    final_epoch = -(-(steps - parsed("adapter#tfinal")) // trainer.state.epoch_length)
    assert trainer.state.epoch == final_epoch + patience < epochs  # stopped early, at the first chance


def test_low_res_scores_sams_own_low_res_output(shipped_models, jsrt_dir, tmp_path):
    """``--low-res`` against the same score computed here from the network's image_size/4 logits."""
    run_bundle(["train", "evaluate"], {
        "dataset_dir": str(jsrt_dir), "split#by": "image", "limit": 4, "model_path": str(shipped_models["fp32"]),
        "output_dir": str(tmp_path), "metric_resolution": "low_res", "prompt_mode": "two_pass"}, workflow_type="infer")
    scored = read_metrics_csv(tmp_path / "metrics.csv")
    network = load_model(shipped_models["fp32"], prompt_mode="two_pass", runtime="eager", low_res_output=True)
    low = network.image_size // 4
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    for item in select_split(jsrt_dir, "test", by="image")[:4]:
        image, _ = read_cxr(item["image"])
        with torch.inference_mode():
            logits = network(torch.from_numpy(image)[None, None])[0]
        assert logits.shape[-2:] == (low, low)
        pred = FillHoles(applied_labels=[1])(KeepLargestConnectedComponent(applied_labels=[1], num_components=2)(
            (logits > 0).to(torch.uint8)))
        label = read_mask(item["label"])
        rows = np.floor(np.arange(low) * label.shape[0] / low).astype(int)  # nearest, as MONAI's Resize
        cols = np.floor(np.arange(low) * label.shape[1] / low).astype(int)
        expected = dice_score(pred[0], label[np.ix_(rows, cols)])
        assert scored[Path(item["image"]).stem]["dice"] == pytest.approx(expected, abs=1e-6)
