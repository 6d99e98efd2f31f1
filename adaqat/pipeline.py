"""The main job: stage 0 (foundation), stage 1 (AdaLoRA), stage 2 (INT8 QAT), evaluation and a report.

Each stage is one run of the bundle's configs (``bundle_runner.run_bundle``) with overrides; this
module only chains them and collects what they wrote into ``report.md`` / ``report.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.atomic import atomic_write_text, atomic_write_with
from scripts.deploy.quality import calibration_path
from scripts.model.sam import count_parameters

from adaqat.bundle_runner import BUNDLE_ROOT, config_file, run_bundle

PROMPT_MODES = ("two_pass", "whole", "box")


@dataclass
class PipelineSettings:
    """What a user chooses for the main job (everything else comes from the bundle configs)."""

    data: str
    out: str
    checkpoint: str | None = None  # a user's SAM (official .pth): skips stage 0
    arch: str = "auto"  # read from the checkpoint; the CPU-sized small SAM when stage 0 trains one
    image_size: int | None = None
    preset: str | None = None  # "paper" merges configs/paper.json (+ paper_qat.json)
    epochs: tuple[int, int, int] = (80, 25, 10)
    batch_size: int | None = None
    limit: int | None = None
    split_by: str = "auto"
    seed: int = 42
    prompt_modes: tuple[str, ...] = PROMPT_MODES
    install_models: bool = False  # copy the final models into the bundle's models/ (its defaults)
    extra: dict[str, Any] = field(default_factory=dict)


def common_overrides(settings: PipelineSettings) -> dict[str, Any]:
    """The overrides every stage and evaluation of one job shares: data, split, seed, size, ``extra``."""
    overrides: dict[str, Any] = {
        "dataset_dir": str(Path(settings.data).resolve()),
        "arch": settings.arch,
        "seed": settings.seed,
        "split#by": settings.split_by,
        "split#seed": settings.seed,
        "limit": settings.limit,
    }
    if settings.image_size:
        overrides["image_size"] = settings.image_size
    if settings.batch_size:
        overrides["batch_size"] = settings.batch_size
    overrides.update(settings.extra)
    return overrides


def parameter_counts(workflow: Any) -> dict[str, int]:
    """A finished training workflow's network: trainable parameters (as its optimiser saw them), and the shipped
    model's own (adapters excluded: they are merged away) in all and in the image encoder, the two bases of the
    reduction ratios (whole model; the paper's 16.6x is image encoder / trainable)."""
    network = workflow.parser.get_parsed_content("network")
    own = {n: p.numel() for n, p in network.named_parameters() if ".lora_" not in n}
    return {"trainable": count_parameters(network, trainable_only=True), "model_params": sum(own.values()),
            "encoder_params": sum(v for n, v in own.items() if ".image_encoder." in f".{n}")}


def run_stage(configs: list[str], overrides: dict[str, Any], model: str | Path) -> dict[str, Any]:
    """Run one training stage (bundle configs + overrides); return its seconds, parameter counts and model path."""
    start = time.time()
    wf = run_bundle(configs, overrides)
    return {"seconds": time.time() - start, **parameter_counts(wf), "model": str(model)}


def run_stages(settings: PipelineSettings) -> dict[str, Any]:
    """Train stage 0 (unless a checkpoint is given), 1 and 2; return paths, timings and trainable counts."""
    out = Path(settings.out).resolve()
    models = out / "models"
    common = common_overrides(settings)
    preset = [settings.preset] if settings.preset else []
    info: dict[str, Any] = {"stages": {}}

    foundation = settings.checkpoint
    if foundation is None:
        foundation = str(models / "foundation.pt")
        info["stages"]["stage0"] = run_stage(["train", "stage0"], {**common, "run_dir": str(out / "stage0"),
                                             "export_path": foundation, "num_epochs": settings.epochs[0]}, foundation)
    info["stages"]["stage1"] = run_stage(["train", *preset], {**common, "sam_checkpoint": foundation, "run_dir": str(out / "stage1"),
                                         "export_path": str(models / "model.pt"), "num_epochs": settings.epochs[1]},
                                         models / "model.pt")
    qat_preset = ["paper_qat"] if settings.preset == "paper" else []
    info["stages"]["stage2"] = run_stage(["train", *preset, "train_qat", *qat_preset],
                                         {**common, "stage1_checkpoint": str(out / "stage1" / "model.pt"),
                                          "run_dir": str(out / "stage2"), "export_path": str(models / "model_int8.pt"),
                                          "num_epochs": settings.epochs[2]}, models / "model_int8.pt")
    info["foundation"] = foundation
    return info


def evaluate_models(settings: PipelineSettings, models: dict[str, str], eval_dir: Path,
                    overrides: dict[str, Any] | None = None, prompt_modes: tuple[str, ...] | None = None,
                    prefix_format: str = "{model}_{mode}", configs: tuple[str, ...] = ("train", "evaluate")) -> dict[str, dict[str, Any]]:
    """Evaluate each model under each prompt mode on the test split; return the summaries by run name.

    ``overrides`` are added to the evaluation runs only (e.g. an unjittered ground-truth box), never to training.
    """
    summaries = {}
    for model_name, model_path in models.items():
        for mode in prompt_modes or settings.prompt_modes:
            prefix = prefix_format.format(model=model_name, mode=mode)
            run_bundle(list(configs), {**common_overrides(settings), **(overrides or {}), "model_path": model_path,
                                       "prompt_mode": mode, "output_dir": str(eval_dir), "metrics_prefix": prefix},
                       workflow_type="infer")
            summaries[prefix] = json.loads((eval_dir / f"{prefix}_summary.json").read_text())
    return summaries


def calibrate_models(settings: PipelineSettings, models: dict[str, str]) -> dict[str, Any]:
    """Each model's quality score fitted on this run's validation split, written beside it (``adaqat.quality``)."""
    from adaqat.quality import calibrate_file
    from scripts.data.datasets import select_split

    fractions = settings.extra.get("split#fractions") or json.loads(Path(config_file("train")).read_text())["split"]["fractions"]
    items = select_split(settings.data, "val", fractions=fractions, seed=settings.seed, by=settings.split_by,
                         limit=settings.limit)
    found = {}
    for name, path in models.items():
        summary = calibrate_file(path, items)
        found[name] = {"candidate": summary["candidate"], "samples": summary["calibration_samples"],
                       "cross_validated": summary["cross_validated"][summary["candidate"]]}
    return found


def run_pipeline(settings: PipelineSettings) -> Path:
    """Run everything and write ``<out>/report.md``; return its path."""
    from adaqat.report import write_report

    out = Path(settings.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    info = run_stages(settings)
    models = {"fp32": info["stages"]["stage1"]["model"], "int8": info["stages"]["stage2"]["model"]}
    eval_dir = out / "eval"
    # the SAM the run started from, scored the same way, so the adaptation's gain shows (a stage 0 trained on
    # these very images has nothing to gain from, so it is scored only when it came from elsewhere)
    before = {"foundation": info["foundation"]} if settings.checkpoint else {}
    info["quality"] = calibrate_models(settings, models)
    evaluate_models(settings, {**before, **models}, eval_dir)
    info["total_seconds"] = time.time() - start
    info["settings"] = {k: v for k, v in vars(settings).items()}
    atomic_write_text(out / "run_info.json", json.dumps(info, indent=2, default=str))
    report = write_report(out, info, models, eval_dir, settings)
    if settings.install_models:
        for name, path in (("model.pt", models["fp32"]), ("model_int8.pt", models["int8"])):
            atomic_write_with(BUNDLE_ROOT / "models" / name, lambda tmp, src=path: shutil.copyfile(src, tmp))
            calibration = calibration_path(path)
            atomic_write_with(calibration_path(BUNDLE_ROOT / "models" / name),
                              lambda tmp, src=calibration: shutil.copyfile(src, tmp))
    return report


__all__ = ["PROMPT_MODES", "PipelineSettings", "calibrate_models", "common_overrides", "evaluate_models", "parameter_counts", "run_pipeline",
           "run_stage", "run_stages"]
