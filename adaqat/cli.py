"""``adaqat``: the command line for people. Every command runs the bundle's configs (or the tools beside them).

The console-script entry of the installed package. Modules are imported when their command runs, so
``adaqat --help`` stays fast; the engine is imported as ``scripts.*`` (see ``adaqat/__init__.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence


def _module(name: str) -> Any:
    """A tool (``adaqat.<name>``) or, for ``scripts.*`` names, an engine module, imported on first use."""
    return importlib.import_module(name if name.startswith("scripts.") else f"adaqat.{name}")


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "data", None):
        overrides["dataset_dir"] = str(Path(args.data).resolve())
    for name, key in (("arch", "arch"), ("image_size", "image_size"), ("batch_size", "batch_size"), ("epochs", "num_epochs"),
                      ("limit", "limit"), ("split_by", "split#by"), ("seed", "seed"), ("prompt", "prompt_mode")):
        value = getattr(args, name, None)
        if value is not None:
            overrides[key] = value
    overrides.update(_parse_sets(getattr(args, "set", None) or []))
    return overrides


def _add_data_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    p.add_argument("--data", help="dataset folder: manifest.csv (image,mask[,patientid]) or images/ + masks/")
    p.add_argument("--arch", choices=["auto", "small", "vit_b", "vit_l", "vit_h"],
                   help="SAM size (default auto: read from --checkpoint; without one the CPU-sized small SAM)")
    p.add_argument("--image-size", type=int,
                   help="SAM input size (default: the SAM's native size, 1024 for ViT-B/L/H; another size resamples "
                        "the position embeddings, with a warning)")
    p.add_argument("--limit", type=int, help="use only the first N images of each split (quick runs)")
    p.add_argument("--split-by", choices=["auto", "patient", "image"], help="split grouping (auto: patient when known)")
    p.add_argument("--seed", type=int)
    if training:
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config override, e.g. --set lr#adapter=0.0005")


def cmd_train(args: argparse.Namespace) -> None:
    configs = ["train"] + (["stage0"] if args.full else []) + ([args.preset] if args.preset else [])
    overrides = _data_overrides(args)
    out = Path(args.out).resolve()
    overrides.update({"run_dir": str(out), "export_path": str(out / "model_fp32.pt")})
    if args.checkpoint:
        overrides["sam_checkpoint"] = str(Path(args.checkpoint).resolve())
    if args.resume:
        overrides["resume_from"] = str(Path(args.resume).resolve())
    _module("bundle_runner").run_bundle(configs, overrides)
    print(f"best checkpoint: {out / 'model.pt'}\nexported FP32 model: {out / 'model_fp32.pt'}")


def read_keep_float_file(path: str | Path) -> list[str]:
    """The ``keep_float`` list of a ``keep_float.json`` written by ``adaqat sensitivity``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read keep-float file ({exc})") from exc
    patterns = data.get("keep_float") if isinstance(data, dict) else None
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{path}: expected a JSON object with \"keep_float\": a list of module-name patterns")
    return patterns


def chosen_keep_float(args: argparse.Namespace) -> list[str] | None:
    """``--keep-float PATTERN...`` or ``--keep-float-file JSON`` (not both); None when neither is given."""
    if args.keep_float is not None and args.keep_float_file:
        raise ValueError("give --keep-float or --keep-float-file, not both")
    return read_keep_float_file(args.keep_float_file) if args.keep_float_file else args.keep_float


def _add_keep_float_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--keep-float", nargs="*", metavar="PATTERN", help=f"module-name patterns kept in float (default: {default}; the flag with no pattern: every Linear INT8)")
    p.add_argument("--keep-float-file", metavar="JSON", help="keep_float.json from `adaqat sensitivity` (its \"keep_float\" list)")


def qat_bundle_args(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Configs and overrides of ``adaqat qat`` (what it hands to the bundle runner)."""
    configs = ["train"] + ([args.preset] if args.preset else []) + ["train_qat"] + (["paper_qat"] if args.preset == "paper" else [])
    overrides = _data_overrides(args)
    out = Path(args.out).resolve()
    overrides.update({"run_dir": str(out), "export_path": str(out / "model_int8.pt"),
                      "stage1_checkpoint": str(Path(args.stage1).resolve())})
    keep_float = chosen_keep_float(args)
    if args.per_tensor:
        overrides["qat#per_channel"] = False
    if keep_float is not None:
        overrides["qat#keep_float"] = list(keep_float)
    if args.resume:
        overrides["resume_from"] = str(Path(args.resume).resolve())
    return configs, overrides


def cmd_qat(args: argparse.Namespace) -> None:
    configs, overrides = qat_bundle_args(args)
    _module("bundle_runner").run_bundle(configs, overrides)
    print(f"INT8 model: {Path(args.out).resolve() / 'model_int8.pt'}")


def cmd_sensitivity(args: argparse.Namespace) -> None:
    sensitivity = _module("sensitivity")
    out = Path(args.out).resolve()
    sweep = sensitivity.run_sweep(args.model, args.data, out, split=args.split, split_by=args.split_by or "auto",
                                  seed=args.seed if args.seed is not None else 42, prompt_mode=args.prompt,
                                  limit=args.limit, per_channel=not args.per_tensor)
    choice = sensitivity.choose_keep_float(sweep, size_ratio=args.size_ratio, max_drop=args.max_drop)
    checks = sensitivity.check_keep_float(args.model, args.data, out, {"sweep": choice["keep_float"],
                                          "paper": choice["paper"]["keep_float"]}, sweep)
    result = {**choice, "measured": checks, "sweep_file": str(out / "sensitivity.json")}
    _module("scripts.atomic").atomic_write_text(out / "keep_float.json", json.dumps(result, indent=2) + "\n")
    kept = set(choice["groups_kept"])
    print(f"{'group':42s} {'bytes saved':>11s} {'Dice':>8s} {'drop':>8s} {'+-SE':>7s}")
    print(f"{'float (nothing INT8)':42s} {'':>11s} {sweep['float']['dice']:8.3f}")
    print(f"{'all INT8':42s} {'':>11s} {sweep['all_quantized']['dice']:8.3f} {sweep['all_quantized']['drop']:8.3f}")
    for name, g in sorted(sweep["groups"].items(), key=lambda kv: -kv[1]["drop"]):
        se = "" if g["drop_se"] is None else f"{g['drop_se']:7.3f}"
        print(f"{name + (' [float]' if name in kept else ''):42s} {g['bytes_saved']:11,d} {g['dice']:8.3f} {g['drop']:8.3f} {se}")
    for name, check in checks.items():
        print(f"{name} list: predicted {check['predicted_ratio']:.3f}x, measured {check['measured_ratio']:.3f}x "
              f"({check['measured_bytes']:,} B); Dice fake-quant {check['fake_quant']['dice']:.3f}"
              + (f", INT8 runtime {check['int8_runtime']['dice']:.3f}" if "int8_runtime" in check else "")
              + f" (float {sweep['float']['dice']:.3f}, n={sweep['n_images']} {sweep['split']})")
    print(f"keep_float: {choice['keep_float']}\nwritten: {out / 'keep_float.json'} (use: adaqat qat --keep-float-file ...); "
          f"sweep took {sweep['seconds']:.0f} s")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.compare:
        result = _module("scripts.evaluation.metrics").compare_prediction_sets(args.compare[0], args.compare[1], args.metric)
        print(json.dumps(result, indent=2))
        return
    if not args.model:
        raise ValueError("evaluate needs --model PATH (or --compare A.csv B.csv)")
    overrides = _data_overrides(args)
    out = Path(args.out).resolve()
    overrides.update({"model_path": str(Path(args.model).resolve()), "output_dir": str(out), "eval_split": args.split,
                      "metrics_prefix": args.prefix, "metric_resolution": "low_res" if args.low_res else "original"})
    _module("bundle_runner").run_bundle(["train", "evaluate"], overrides, workflow_type="infer")
    plot = _module("quality").plot_evaluation(out / f"{args.prefix}_quality.csv")
    print((out / f"{args.prefix}_summary.json").read_text())
    if plot:
        print(f"predicted vs real Dice per image: {out / f'{args.prefix}_quality.csv'} (plot {plot})")


def cmd_infer(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {"dataset_dir": [str(Path(p).resolve()) for p in args.inputs],
                                 "output_dir": str(Path(args.output).resolve())}
    if args.model:
        overrides["model_path"] = str(Path(args.model).resolve())
    if args.prompt:
        overrides["prompt_mode"] = args.prompt
    if args.box:
        overrides["box"] = list(args.box)
    if args.device:
        overrides["device"] = f"$torch.device('{args.device}')"
    if args.runtime:
        overrides["runtime"] = args.runtime
    overrides["output_format"] = None if args.output_format == "auto" else args.output_format
    overrides.update({"recursive": bool(args.recursive), "resume": bool(args.resume)})
    overrides.update(_parse_sets(args.set or []))
    _module("bundle_runner").run_bundle(["inference"], overrides, workflow_type="infer")
    print(f"masks written to {Path(args.output).resolve()}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    bench = _module("benchmark")
    out = Path(args.out).resolve()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = bench.run(args.arch, out, image_size=args.image_size, routes=args.routes, threads=args.threads,
                       repeats=args.repeats, warmup=args.warmup, keep_float=chosen_keep_float(args), log=log,
                       profile=args.profile)
    print(bench.markdown(result))
    print(f"written: {out} and {out.with_suffix('.md')}")


def cmd_export(args: argparse.Namespace) -> None:
    stage_configs = ["train"] + ([args.preset] if args.preset else [])
    if args.stage == 2:
        stage_configs += ["train_qat"] + (["paper_qat"] if args.preset == "paper" else [])
    checkpoint = str(Path(args.checkpoint).resolve())
    overrides = _data_overrides(args)
    writer = "export_int8" if args.stage == 2 else "export_fp32"
    # The network is built with the checkpoint's own architecture and filled from it by the exporter, so the
    # freshly initialised weights it starts with are never used.
    overrides.update({"init_checkpoint": None, "stage1_checkpoint": None, "allow_random_encoder": True,
                      "sam_arch": f"$scripts.model.sam.arch_for({args.arch or 'auto'!r}, @image_size, {checkpoint!r})",
                      "run": [f"$scripts.model_files.export.{writer}(@network, {checkpoint!r}, {str(Path(args.output).resolve())!r})"]})
    _module("bundle_runner").run_bundle(stage_configs, overrides)
    print(f"exported {args.output}")


def cmd_export_onnx(args: argparse.Namespace) -> None:
    load = _module("scripts.model_files.load")
    model = Path(args.model).resolve()
    network = load.load_model(model, runtime="eager")
    paths = [load.onnx_graph(network, model, part)[1] for part in ("encoder", "decoder")]
    print("\n".join(f"ONNX {part}: {path}" for part, path in zip(("encoder", "decoder"), paths)))


def cmd_calibrate_quality(args: argparse.Namespace) -> None:
    datasets = _module("scripts.data.datasets")
    items = datasets.select_split(args.data, args.split, by=args.split_by or "auto", seed=args.seed or 42)
    summary = _module("quality").calibrate_file(Path(args.model).resolve(), items, threshold=args.threshold,
                                                prompt_mode=args.prompt, output=args.output)
    print(json.dumps({k: summary[k] for k in ("written", "candidate", "calibration_samples", "cross_validated")}, indent=2))


def cmd_stats(args: argparse.Namespace) -> None:
    stats = _module("stats").model_stats(args.arch, image_size=args.image_size)
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    print(f"{args.arch}: {stats['total_params']:,} parameters " + ", ".join(f"{k} {v:,}" for k, v in stats["parts"].items()))
    for method, count in stats["trainable"].items():
        print(f"  trainable ({method}): {count:,}  ({stats['reduction_vs_full'][method]:.1f}x fewer than the whole model, "
              f"{stats['reduction_paper_basis'][method]:.1f}x on the paper's basis: image encoder / trainable)")
    for kind, size in stats["file_bytes"].items():
        print(f"  file {kind}: {size:,} bytes")
    print(f"  paper formula ratio: {stats['paper_formula_ratio']:.4f}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    pipeline = _module("pipeline")
    checkpoint = args.checkpoint
    if not checkpoint and not args.train_foundation:  # start from the shipped foundation, as from a pretrained SAM
        checkpoint = _module("scripts.model_files.load").default_foundation_path(_module("bundle_runner").BUNDLE_ROOT)
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(_module("scripts.model_files.load").missing_model_hint(
                checkpoint, _module("bundle_runner").BUNDLE_ROOT) + " (or --train-foundation to train one on --data)")
    settings = pipeline.PipelineSettings(
        data=args.data, out=args.out, checkpoint=checkpoint, arch=args.arch or "auto", image_size=args.image_size,
        preset=args.preset, epochs=tuple(args.epochs), batch_size=args.batch_size, limit=args.limit,
        split_by=args.split_by or "auto", seed=args.seed if args.seed is not None else 42,
        install_models=args.install_models,
        extra=_parse_sets(args.set or []),
    )
    print(f"report: {pipeline.run_pipeline(settings)}")


def cmd_compare(args: argparse.Namespace) -> None:
    study = _module("study.runner")
    protocols = ("jsrt", "transfer") if args.protocol == "both" else (args.protocol,)
    data = {k: str(v) for k, v in study.DEFAULT_DATA.items()}
    for protocol, path in (("jsrt", args.jsrt_data), ("transfer", args.transfer_data)):
        if path:
            data[protocol] = str(Path(path).resolve())
    chosen = {"epochs": args.epochs, "qat_epochs": args.qat_epochs, "foundation_epochs": args.foundation_epochs,
              "limit": args.limit, "perf_repeats": args.perf_repeats}
    common = {"out": args.out, "protocols": protocols, "data": data, "foundation": args.foundation,
              "batch_size": args.batch_size, "perf": not args.no_perf, "seed": args.seed if args.seed is not None else 42,
              "command": args.command_line or "adaqat " + shlex.join(args.argv)}
    if args.quick:
        settings = study.StudySettings.quick_settings(**common, **chosen)
    else:
        settings = study.StudySettings(**common, **{k: v for k, v in chosen.items() if v is not None})
    print(f"results: {study.run_study(settings)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaqat", description="AdaLoRA-QAT lung segmentation of chest X-rays (SAM, MONAI bundle)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="stage 1: AdaLoRA on the encoder + decoder training (or --full: stage 0)")
    _add_data_args(p)
    p.add_argument("-o", "--out", required=True, help="run folder (checkpoints, TensorBoard, rank pattern, model)")
    p.add_argument("--checkpoint", help="SAM weights to start from (official sam_vit_b_01ec64.pth or a bundle model.pt)")
    p.add_argument("--preset", choices=["paper"], help="the paper's exact recipe (configs/paper.json)")
    p.add_argument("--full", action="store_true", help="train the whole SAM, no adapters (stage 0 / full fine-tuning)")
    p.add_argument("--resume", help="resume from a checkpoint_*.pt of this run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("qat", help="stage 2: INT8 quantization-aware training from a stage-1 checkpoint, then INT8 export")
    _add_data_args(p)
    p.add_argument("--stage1", required=True, help="stage-1 best checkpoint (<run>/model.pt)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--preset", choices=["paper"])
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (paper) instead of per-channel")
    _add_keep_float_args(p, "encoder qkv + adapters")
    p.add_argument("--resume")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("sensitivity", help="quantize one layer group at a time, record the Dice drop, choose the float-kept list for a size target")
    p.add_argument("--data", required=True, help="dataset folder the model was trained on (its val split is scored)")
    p.add_argument("--split-by", choices=["auto", "patient", "image"], help="split grouping, as in training (auto: patient when known)")
    p.add_argument("--seed", type=int, help="split and box-jitter seed, as in training (default 42)")
    p.add_argument("--limit", type=int, help="score only the first N images of the split (quick runs)")
    p.add_argument("--model", required=True, help="FP32 model (exported model.pt / model_fp32.pt, or an official SAM .pth)")
    p.add_argument("-o", "--out", required=True, help="folder for sensitivity.json/.csv/.png, keep_float.json and the INT8 artefacts")
    p.add_argument("--split", default="val", choices=["val", "train"], help="split to score on (never test: the choice must not see it)")
    p.add_argument("--prompt", default="two_pass", choices=["two_pass", "whole", "box"])
    p.add_argument("--size-ratio", type=float, default=2.24, help="the INT8 file must stay at least this many times smaller than FP32")
    p.add_argument("--max-drop", type=float, help="groups losing at most this many Dice points are quantized anyway (default 0)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (paper) instead of per-channel")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("evaluate", help="per-image Dice/IoU/NSD/HD95/ASSD of a model on a split; or --compare two CSVs (Wilcoxon)")
    _add_data_args(p, training=False)
    p.add_argument("--model", help="FP32 model.pt, INT8 model_int8.pt or an official SAM .pth")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("-o", "--out", default="eval")
    p.add_argument("--prefix", default="metrics", help="file prefix of the CSV/JSON written")
    p.add_argument("--prompt", choices=["two_pass", "whole", "box"], help="box = ground-truth box with 0-20 px jitter (paper)")
    p.add_argument("--low-res", action="store_true",
                   help="the paper's metric setting: score SAM's own low-resolution logits (image_size/4: 256x256 for a "
                        "1024 input, 64x64 for the small SAM), thresholded there, against the reference resized (nearest) "
                        "to that grid; distances in low-res pixels")
    p.add_argument("--compare", nargs=2, metavar=("A.csv", "B.csv"), help="Wilcoxon signed-rank test between two per-image CSVs")
    p.add_argument("--metric", default="dice")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("infer", help="segment files or folders; masks are written in each input's format and geometry")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--model", help="model file (default: the bundle's models/model_int8.pt, else models/model.pt)")
    p.add_argument("--prompt", choices=["two_pass", "whole", "box"],
                   help="two_pass (default): whole image, then a box refined from it; whole; box: use --box as is")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="a box prompt in image pixels (refined by a second pass unless --prompt box)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--runtime", choices=["auto", "ort", "onnx", "eager"],
                   help="auto (default): the fastest measured route on CPU; ort: image encoder in onnxruntime; onnx: the "
                        "whole segmenter in onnxruntime with numpy around it (the torch-free predictor's code); eager: PyTorch only")
    p.add_argument("--output-format", choices=["auto", "dicom_seg", "dicom", "nifti", "nrrd", "png"], default="auto",
                   help="auto (default): each input's own format; for a DICOM input a DICOM Segmentation <stem>_seg.dcm "
                        "referencing the source (dicom_seg); dicom: a DICOM image mask <stem>_mask.dcm instead")
    p.add_argument("--recursive", action="store_true", help="a folder's whole tree; masks mirror it under OUTDIR")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs an earlier (killed) run into OUTDIR finished: mask and quality report both written")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("benchmark", help="CPU latency, images/s, peak memory, load time, file size of every route "
                                         "(eager/onnxruntime/compiled, FP32/INT8/fake-quant), random weights")
    p.add_argument("--arch", nargs="+", default=["vit_b", "small"], choices=["small", "vit_b", "vit_l", "vit_h", "shipped"],
                   help="random-weight SAMs of these sizes; 'shipped' = the bundle's own trained model.pt / model_int8.pt")
    p.add_argument("--profile", action="store_true", help="also break the onnxruntime encoder's time down by operator")
    p.add_argument("--image-size", type=int, help="SAM input size (default: 1024 for ViT-B/L/H, the arch's own for small)")
    p.add_argument("--routes", nargs="+", metavar="ROUTE",
                   help="subset of eager_fp32 eager_int8 eager_fake_quant ort_fp32 ort_int8 onnx_fp32 onnx_int8 "
                        "compiled_fp32 compiled_pt2e_int8 transformers_fp32 (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    _add_keep_float_args(p, "the paper's list, encoder qkv + adapters")
    p.add_argument("-o", "--out", default="runs/bench/benchmark.json", help="JSON report; the Markdown goes beside it")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("export", help="export a training checkpoint: FP32 with adapters merged (stage 1) or INT8 (stage 2)")
    _add_data_args(p, training=False)
    p.add_argument("checkpoint", help="<run>/model.pt of stage 1 or 2")
    p.add_argument("--stage", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--preset", choices=["paper"])
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-onnx", help="the ONNX form of a model file (encoder + decoder graphs beside it), "
                                            "what the torch-free predictor and 3D Slicer's default route run")
    p.add_argument("model", help="model file (FP32 model.pt or INT8 model_int8.pt)")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("calibrate-quality", help="fit a model's quality score (predicted Dice, review flag) on a "
                                                  "dataset's validation split; written beside the model")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its validation split is used)")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    p.add_argument("--split-by", choices=["auto", "patient", "image"])
    p.add_argument("--seed", type=int, help="split seed (default 42, the training configs')")
    p.add_argument("--prompt", choices=["two_pass", "whole"], default="two_pass")
    p.add_argument("--threshold", type=float, default=0.9, help="predicted Dice under which a mask is marked review")
    p.add_argument("-o", "--output", help="default: <model stem>.quality.json beside the model")
    p.set_defaults(func=cmd_calibrate_quality)

    p = sub.add_parser("stats", help="parameter counts, trainable parameters per method, measured FP32/INT8 file sizes")
    p.add_argument("--arch", default="vit_b", choices=["small", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("pipeline", help="the main job: from a SAM (default: the shipped foundation), stage 1, stage 2, "
                                        "evaluation of the SAM before and the models after adaptation, report")
    _add_data_args(p, training=False)
    p.add_argument("-o", "--out", required=True)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--checkpoint", help="start from this SAM (official .pth or a bundle model; default: the bundle's "
                                            "models/foundation.pt, a small SAM trained on JSRT)")
    start.add_argument("--train-foundation", action="store_true",
                       help="train the small SAM first (stage 0) on --data itself, instead of starting from a pretrained one")
    p.add_argument("--preset", choices=["paper"])
    p.add_argument("--epochs", type=int, nargs=3, default=[80, 25, 10], metavar=("E0", "E1", "E2"))
    p.add_argument("--install-models", action="store_true",
                   help="copy the final FP32 and INT8 models into the bundle's models/ (the defaults of infer, Slicer, MONAI Label)")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("compare", help="method comparison: full/decoder-only FT, LoRA, AdaLoRA, AdaLoRA-QAT, PTQ and a UNet, "
                                       "tables (CSV, JSON, Markdown) and plots")
    p.add_argument("--protocol", choices=["jsrt", "transfer", "both"], default="both",
                   help="jsrt: in-domain, split by image; transfer: adapt to the CC BY sample, split by patient")
    p.add_argument("-o", "--out", required=True, help="study folder (one subfolder per protocol and method; reruns resume)")
    p.add_argument("--foundation", help="stage-0 model to start from (default: train one on the JSRT training split)")
    p.add_argument("--epochs", type=int, help="stage-1 epochs of every method (default 25)")
    p.add_argument("--qat-epochs", type=int, help="stage-2 (QAT) epochs, added on top (default 10)")
    p.add_argument("--foundation-epochs", type=int, help="stage-0 epochs when the foundation is trained here (default 40)")
    p.add_argument("--limit", type=int, help="use only the first N images of each split")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--quick", action="store_true", help="CI's reduced form: 1 epoch per stage, 6 images per split")
    p.add_argument("--perf-repeats", type=int, help="timed CPU runs per model (default 5)")
    p.add_argument("--no-perf", action="store_true", help="skip the CPU latency / peak memory measurements")
    p.add_argument("--jsrt-data", help="JSRT folder (default ../shared/data/jsrt_scr_224 beside the repository)")
    p.add_argument("--transfer-data", help="CC BY folder (default sample_data/cxr_ccby_512)")
    p.add_argument("--command-line", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "export" and args.stage == 0:
        args.set = (args.set or []) + ["adapter=null", "train_encoder=true"]
        args.stage = 1
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("adaqat: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # users get one clear line; --debug gives the traceback
        if args.debug:
            raise
        print(f"adaqat {args.command}: error: {_module('bundle_runner').root_cause(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
