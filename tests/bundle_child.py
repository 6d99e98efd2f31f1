"""Run the bundle in a child process (plain or under ``torchrun``) and record what tests compare.

Usage: ``python tests/bundle_child.py SPEC.json`` where SPEC holds ``configs``, ``overrides`` and
``summary`` (a path). After the run, each process writes ``summary`` (``{rank}`` is replaced by its
rank): last training loss, last and best validation Dice, iterations, and the AdaLoRA Lambdas (the
masked singular values: their zeros are the rank pattern), the allocator's rank pattern, and every
trainable weight.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "monai_bundle"
sys.path.insert(0, str(BUNDLE_ROOT))

from scripts.training.distributed import unwrap  # noqa: E402

from adaqat.bundle_runner import run_bundle  # noqa: E402


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    workflow = run_bundle(spec["configs"], spec["overrides"])
    parsed = workflow.parser.get_parsed_content
    trainer, evaluator, network = parsed("train#trainer"), parsed("validate#evaluator"), unwrap(parsed("network"))
    output = trainer.state.output
    summary = {
        "iteration": int(trainer.state.iteration),
        "epoch": int(trainer.state.epoch),
        "loss": float(output[0]["loss"]) if output else None,
        "val_dice": float(evaluator.state.metrics.get("val_mean_dice", float("nan"))),
        "best_dice": float(evaluator.state.best_metric),
        "adapters": {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if ".lora_" in k},
        "trainable": {k: v.detach().cpu().clone() for k, v in network.named_parameters() if v.requires_grad},
    }
    tuner = getattr(network, "adalora_tuner", None)
    if tuner is not None:
        summary["rank_pattern"] = tuner.peft_config["default"].rank_pattern
    rank = os.environ.get("RANK", "0")
    torch.save(summary, spec["summary"].replace("{rank}", rank))


if __name__ == "__main__":
    main(sys.argv[1])
