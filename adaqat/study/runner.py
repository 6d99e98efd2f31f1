"""The method comparison (``adaqat compare``): every method from one foundation, same data, split, seed and epochs.

Why a module of its own: the study is a list of bundle runs (``pipeline.run_stage`` / ``evaluate_models``)
with per-method overrides, plus the bookkeeping that makes a long study resumable: each method writes its
model and ``method.json`` into its own folder, and a method whose model and ``method.json`` exist is not run
again. Tables come from :mod:`.study_tables`, plots from :mod:`.study_plots`.

Protocols (see the issue): ``jsrt`` — in-domain, JSRT split by image; ``transfer`` — the CC BY sample, split
by patient. Both start from the same foundation (stage 0 on the JSRT *train* split, so the JSRT test split is
never seen in training).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from scripts.atomic import atomic_write_text
from scripts.model.factory import PAPER_KEEP_FLOAT

from adaqat.bundle_runner import BUNDLE_ROOT
from adaqat.pipeline import PipelineSettings, common_overrides, evaluate_models, run_stage
from adaqat.stats import adapter_options, matching_lora
from adaqat.study.methods import METHOD_BY_NAME, PROTOCOLS, SAM_PROMPTS

LOG = logging.getLogger("adaqat.study")
REPO_ROOT = BUNDLE_ROOT.parent
DEFAULT_DATA = {
    "jsrt": REPO_ROOT.parent / "shared" / "data" / "jsrt_scr_224",
    "transfer": REPO_ROOT / "sample_data" / "cxr_ccby_512",
}
# Evaluation only: the ground-truth box is the reference mask's bounding box, no random jitter; every model
# runs in PyTorch (the engine's reference route, the one whose latency is measured), not onnxruntime.
GT_BOX_EVAL = {"box_jitter": [0, 0], "runtime": "eager"}
QUICK = {"epochs": 1, "qat_epochs": 1, "foundation_epochs": 1, "limit": 6, "perf_repeats": 1}


@dataclass
class StudySettings:
    """What ``adaqat compare`` chooses; everything else is the bundle configs' default."""

    out: str
    protocols: tuple[str, ...] = ("jsrt", "transfer")
    data: dict[str, str] = field(default_factory=lambda: {k: str(v) for k, v in DEFAULT_DATA.items()})
    foundation: str | None = None
    epochs: int = 25
    qat_epochs: int = 10
    foundation_epochs: int = 40
    limit: int | None = None
    batch_size: int | None = None
    seed: int = 42
    quick: bool = False
    perf_repeats: int = 5
    perf_threads: int = 2
    perf: bool = True  # measure CPU latency / peak memory (a fresh process per model: ~10 s each)
    command: str = ""

    @classmethod
    def quick_settings(cls, **kwargs: Any) -> "StudySettings":
        """The reduced study CI runs: QUICK's values unless given."""
        values = {**QUICK, **{k: v for k, v in kwargs.items() if v is not None}}
        return cls(quick=True, **values)




def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _done(folder: Path) -> dict[str, Any] | None:
    """A finished method's record, or None: its ``method.json`` and the model it names both exist."""
    record = folder / "method.json"
    if record.is_file():
        info = _json(record)
        if Path(info.get("model", "")).is_file():
            return info
    return None


def _once(folder: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a method unless a previous run finished it (resumable study); record what it did."""
    folder.mkdir(parents=True, exist_ok=True)
    info = _done(folder)
    if info is not None:
        LOG.info("%s: done before, skipped", folder.name)
        return info
    info = run()
    _write_json(folder / "method.json", info)
    return info


def _same_settings(root: Path, chosen: dict[str, Any]) -> None:
    """A resumed protocol folder must have been made with the same settings, or its finished methods would mix."""
    path = root / "settings.json"
    if path.is_file():
        before = _json(path)
        differ = {k: (before.get(k), v) for k, v in chosen.items() if before.get(k) != v}
        if differ:
            raise ValueError(f"{root} holds a study made with other settings ({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in differ.items())}); "
                             "use another --out, or delete that folder")
        return
    root.mkdir(parents=True, exist_ok=True)
    _write_json(path, chosen)


def train_foundation(settings: StudySettings) -> str:
    """Stage 0 on the JSRT training split (by image): the foundation every method starts from."""
    if settings.foundation:
        path = Path(settings.foundation).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--foundation {path}: no such file")
        return str(path)
    folder = Path(settings.out).resolve() / "foundation"
    model = folder / "model_fp32.pt"
    pipe = _pipeline_settings(settings, "jsrt")
    info = _once(folder, lambda: run_stage(["train", "stage0"], {**common_overrides(pipe), "run_dir": str(folder),
                                           "export_path": str(model), "num_epochs": settings.foundation_epochs}, model))
    return info["model"]


def _pipeline_settings(settings: StudySettings, protocol: str) -> PipelineSettings:
    data = settings.data[protocol]
    if not Path(data).is_dir():
        raise FileNotFoundError(f"{protocol} data folder {data} not found (pass --{protocol}-data)")
    return PipelineSettings(data=data, out=str(Path(settings.out).resolve() / protocol), limit=settings.limit,
                            split_by=PROTOCOLS[protocol]["split_by"], seed=settings.seed, batch_size=settings.batch_size,
                            prompt_modes=SAM_PROMPTS)


def choose_float_list(settings: StudySettings, pipe: PipelineSettings, stage1_model: str, folder: Path) -> dict[str, Any]:
    """Run the sensitivity sweep on the AdaLoRA FP32 model (validation split) and choose the float list."""
    choice_path = folder / "choice.json"
    if choice_path.is_file():
        return _json(choice_path)
    from adaqat.sensitivity import choose_keep_float, run_sweep

    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    sweep = run_sweep(stage1_model, pipe.data, folder, split="val", split_by=pipe.split_by, seed=settings.seed,
                      prompt_mode="two_pass", limit=settings.limit)
    choice = dict(choose_keep_float(sweep, size_ratio=2.24))
    choice["seconds"] = time.time() - start
    _write_json(choice_path, choice)
    return choice


def run_protocol(settings: StudySettings, protocol: str, foundation: str) -> dict[str, Any]:
    """Train (or reuse) every method of one protocol, evaluate each under its prompts, measure CPU cost."""
    pipe = _pipeline_settings(settings, protocol)
    root = Path(pipe.out)
    common = common_overrides(pipe)
    epochs = settings.epochs
    stage1 = {"sam_checkpoint": foundation, "num_epochs": epochs}
    adalora = adapter_options("train.json")

    def folder(name: str) -> Path:
        return root / name

    def train(name: str, configs: list[str], overrides: dict[str, Any], model_name: str, **extra: Any) -> dict[str, Any]:
        out = folder(name)
        model = out / model_name

        def run() -> dict[str, Any]:
            info = run_stage(configs, {**common, **overrides, "run_dir": str(out), "export_path": str(model)}, model)
            return {**info, "configs": configs, **extra}

        return _once(out, run)

    _same_settings(root, {"data": str(Path(pipe.data).resolve()), "split_by": pipe.split_by, "seed": settings.seed,
                          "limit": settings.limit, "epochs": epochs, "qat_epochs": settings.qat_epochs,
                          "batch_size": settings.batch_size, "foundation": foundation})
    results: dict[str, dict[str, Any]] = {}
    results["full_ft"] = train("full_ft", ["train", "stage0"], stage1, "model_fp32.pt", epochs=epochs)
    results["decoder_ft"] = train("decoder_ft", ["train"], {**stage1, "adapter": None, "train_encoder": False},
                                  "model_fp32.pt", epochs=epochs)
    lora = matching_lora(adalora)
    results["lora"] = train("lora", ["train"], {**stage1, "adapter": lora}, "model_fp32.pt", epochs=epochs, adapter=lora)
    results["adalora"] = train("adalora", ["train"], stage1, "model_fp32.pt", epochs=epochs, adapter=adalora)
    stage1_ckpt = str(folder("adalora") / "model.pt")  # best checkpoint, adapters included: stage 2 starts here

    choice = choose_float_list(settings, pipe, results["adalora"]["model"], root / "sensitivity")
    swept = list(choice["keep_float"])
    qat = {"stage1_checkpoint": stage1_ckpt, "num_epochs": settings.qat_epochs}
    results["adalora_qat"] = train("adalora_qat", ["train", "train_qat"], {**qat, "qat": {"keep_float": swept, "per_channel": True}},
                                   "model_int8.pt", epochs=epochs, qat_epochs=settings.qat_epochs, keep_float=swept)
    results["adalora_qat_paper"] = train("adalora_qat_paper", ["train", "train_qat"],
                                         {**qat, "qat": {"keep_float": list(PAPER_KEEP_FLOAT), "per_channel": True}},
                                         "model_int8.pt", epochs=epochs, qat_epochs=settings.qat_epochs,
                                         keep_float=list(PAPER_KEEP_FLOAT))
    ptq_model = folder("ptq") / "model_int8.pt"
    results["ptq"] = train("ptq", ["train", "train_qat"], {
        "stage1_checkpoint": stage1_ckpt, "qat": {"keep_float": swept, "per_channel": True},
        # no training: build the stage-2 network from the AdaLoRA checkpoint and write its real INT8 artefact
        "run": [f"$scripts.model_files.export.export_int8(@network, None, {str(ptq_model)!r})"]}, "model_int8.pt",
        epochs=epochs, qat_epochs=0, keep_float=swept, trainable=0)  # nothing is trained
    budget = int(round(results["adalora"]["seconds"] + results["adalora_qat"]["seconds"]))
    results["unet"] = train("unet", ["train", "unet_baseline"], {"time_limit_s": max(1, budget), "num_epochs": 100000},
                            "model_fp32.pt", time_limit_s=max(1, budget))

    for name, info in results.items():
        method = METHOD_BY_NAME[name]
        evaluate(pipe, name, info["model"], method.prompts, folder(name) / "eval")
        info["perf"] = measure(info["model"], folder(name) / "perf.json", settings) if settings.perf else None
    meta = {"protocol": protocol, "data": pipe.data, "split_by": pipe.split_by, "seed": settings.seed,
            "limit": settings.limit, "foundation": foundation, "keep_float_choice": choice, "methods": results}
    _write_json(root / "study.json", meta)
    return meta


def evaluate(pipe: PipelineSettings, name: str, model: str, prompts: tuple[str, ...], eval_dir: Path) -> None:
    """Per-image metrics of one model on the test split under each prompt (skipped when already written)."""
    todo = tuple(p for p in prompts if not (eval_dir / f"{p}_summary.json").is_file())
    if not todo:
        return
    # The UNet ignores prompts; "whole" only selects the evaluate config's box-free batch preparation.
    modes = ("whole",) if todo == ("none",) else todo
    summaries = evaluate_models(pipe, {name: model}, eval_dir, overrides=GT_BOX_EVAL, prompt_modes=modes,
                                prefix_format="{mode}")
    if todo == ("none",):
        for suffix in (".csv", "_summary.json"):
            os.replace(eval_dir / f"whole{suffix}", eval_dir / f"none{suffix}")
    LOG.info("%s evaluated: %s", name, {k: round(v["metrics"]["dice"]["mean"], 4) for k, v in summaries.items()})


def measure(model: str, out: Path, settings: StudySettings) -> dict[str, Any]:
    """CPU latency and peak memory of one model file, measured in a fresh process (``adaqat.perf``)."""
    if out.is_file():
        return _json(out)
    from adaqat.perf import measure_in_child

    result = measure_in_child(model, threads=settings.perf_threads, repeats=settings.perf_repeats,
                              warmup=1, prompt_mode="whole")
    _write_json(out, result)
    return result


def machine_facts() -> dict[str, Any]:
    """What the latency numbers depend on: CPU, core count, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform()}


def run_study(settings: StudySettings) -> Path:
    """Foundation, every protocol's methods, tables, plots and ``results.md``; return the Markdown path."""
    from adaqat.study.plots import plot_protocol
    from adaqat.study.tables import write_results

    out = Path(settings.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    foundation = train_foundation(settings)
    protocols = {}
    for protocol in settings.protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
        meta = run_protocol(settings, protocol, foundation)
        meta["plots"] = plot_protocol(out / protocol, meta)
        protocols[protocol] = meta
    facts = {**machine_facts(), "total_seconds": time.time() - start}
    return write_results(out, protocols, {**asdict(settings), "foundation": foundation}, facts)


__all__ = ["DEFAULT_DATA", "StudySettings", "run_protocol", "run_study",
           "train_foundation"]
