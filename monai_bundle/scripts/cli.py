"""``adaqat``: the command line for people. Every command runs the bundle's configs (or its scripts).

This file is also the console-script entry of the installed package (``adaqat_bundle.scripts.cli``).
To keep one copy of every class in memory, it imports the engine only as ``scripts.*`` after putting
the bundle root on ``sys.path`` — exactly as ``python -m monai.bundle run`` does — never relatively.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def _engine(module: str) -> Any:
    if str(BUNDLE_ROOT) not in sys.path:
        sys.path.insert(0, str(BUNDLE_ROOT))
    return importlib.import_module(f"scripts.{module}")


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
    p.add_argument("--arch", choices=["small", "vit_b", "vit_l", "vit_h"], help="SAM size (default: the config's, small)")
    p.add_argument("--image-size", type=int, help="SAM input size (position embeddings are resampled)")
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
    _engine("bundle_runner").run_bundle(configs, overrides)
    print(f"best checkpoint: {out / 'model.pt'}\nexported FP32 model: {out / 'model_fp32.pt'}")


def cmd_qat(args: argparse.Namespace) -> None:
    configs = ["train"] + ([args.preset] if args.preset else []) + ["train_qat"] + (["paper_qat"] if args.preset == "paper" else [])
    overrides = _data_overrides(args)
    out = Path(args.out).resolve()
    overrides.update({"run_dir": str(out), "export_path": str(out / "model_int8.pt"),
                      "stage1_checkpoint": str(Path(args.stage1).resolve())})
    if args.per_tensor or args.keep_float is not None:
        overrides["qat"] = {"per_channel": not args.per_tensor,
                            "keep_float": args.keep_float if args.keep_float is not None else list(_engine("model_factory").PAPER_KEEP_FLOAT)}
    if args.resume:
        overrides["resume_from"] = str(Path(args.resume).resolve())
    _engine("bundle_runner").run_bundle(configs, overrides)
    print(f"INT8 model: {out / 'model_int8.pt'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.compare:
        result = _engine("seg_metrics").compare_prediction_sets(args.compare[0], args.compare[1], args.metric)
        print(json.dumps(result, indent=2))
        return
    if not args.model:
        raise ValueError("evaluate needs --model PATH (or --compare A.csv B.csv)")
    overrides = _data_overrides(args)
    out = Path(args.out).resolve()
    overrides.update({"model_path": str(Path(args.model).resolve()), "output_dir": str(out), "eval_split": args.split,
                      "metrics_prefix": args.prefix, "metric_resolution": "low_res" if args.low_res else "original"})
    _engine("bundle_runner").run_bundle(["train", "evaluate"], overrides, workflow_type="infer")
    print((out / f"{args.prefix}_summary.json").read_text())


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
    overrides.update(_parse_sets(args.set or []))
    _engine("bundle_runner").run_bundle(["inference"], overrides, workflow_type="infer")
    print(f"masks written to {Path(args.output).resolve()}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    bench = _engine("benchmark")
    out = Path(args.out).resolve()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = bench.run(args.arch, out, image_size=args.image_size, routes=args.routes, threads=args.threads,
                       repeats=args.repeats, warmup=args.warmup, log=log)
    print(bench.markdown(result))
    print(f"written: {out} and {out.with_suffix('.md')}")


def cmd_export(args: argparse.Namespace) -> None:
    stage_configs = ["train"] + ([args.preset] if args.preset else [])
    if args.stage == 2:
        stage_configs += ["train_qat"] + (["paper_qat"] if args.preset == "paper" else [])
    checkpoint = str(Path(args.checkpoint).resolve())
    overrides = _data_overrides(args)
    writer = "export_int8" if args.stage == 2 else "export_fp32"
    overrides.update({"init_checkpoint": None, "stage1_checkpoint": None,
                      "run": [f"$scripts.export.{writer}(@network, {checkpoint!r}, {str(Path(args.output).resolve())!r})"]})
    _engine("bundle_runner").run_bundle(stage_configs, overrides)
    print(f"exported {args.output}")


def cmd_stats(args: argparse.Namespace) -> None:
    stats = _engine("stats").model_stats(args.arch, image_size=args.image_size)
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    print(f"{args.arch}: {stats['total_params']:,} parameters " + ", ".join(f"{k} {v:,}" for k, v in stats["parts"].items()))
    for method, count in stats["trainable"].items():
        print(f"  trainable ({method}): {count:,}  ({stats['reduction_vs_full'][method]:.1f}x fewer than full)")
    for kind, size in stats["file_bytes"].items():
        print(f"  file {kind}: {size:,} bytes")
    print(f"  paper formula ratio: {stats['paper_formula_ratio']:.4f}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    pipeline = _engine("pipeline")
    settings = pipeline.PipelineSettings(
        data=args.data, out=args.out, checkpoint=args.checkpoint, arch=args.arch or "small", image_size=args.image_size,
        preset=args.preset, epochs=tuple(args.epochs), batch_size=args.batch_size, limit=args.limit,
        split_by=args.split_by or "auto", seed=args.seed if args.seed is not None else 42,
        install_models=args.install_models,
        extra=_parse_sets(args.set or []),
    )
    print(f"report: {pipeline.run_pipeline(settings)}")


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
    p.add_argument("--keep-float", nargs="*", metavar="PATTERN", help="module-name patterns kept in float (default: encoder qkv + adapters)")
    p.add_argument("--resume")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("evaluate", help="per-image Dice/IoU/NSD/HD95/ASSD of a model on a split; or --compare two CSVs (Wilcoxon)")
    _add_data_args(p, training=False)
    p.add_argument("--model", help="FP32 model.pt, INT8 model_int8.pt or an official SAM .pth")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("-o", "--out", default="eval")
    p.add_argument("--prefix", default="metrics", help="file prefix of the CSV/JSON written")
    p.add_argument("--prompt", choices=["two_pass", "whole", "box"], help="box = ground-truth box with 0-20 px jitter (paper)")
    p.add_argument("--low-res", action="store_true", help="score at SAM's 256x256 output (the paper's setting)")
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
    p.add_argument("--runtime", choices=["auto", "ort", "eager"],
                   help="auto (default): image encoder in onnxruntime on CPU when installed (fastest), else eager PyTorch; "
                        "eager: PyTorch only")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("benchmark", help="CPU latency, images/s, peak memory, load time, file size of every route "
                                         "(eager/onnxruntime/compiled, FP32/INT8/fake-quant), random weights")
    p.add_argument("--arch", nargs="+", default=["vit_b", "small"], choices=["small", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--image-size", type=int, help="SAM input size (default: 1024 for ViT-B/L/H, the arch's own for small)")
    p.add_argument("--routes", nargs="+", metavar="ROUTE",
                   help="subset of eager_fp32 eager_int8 eager_fake_quant ort_fp32 ort_int8 compiled_fp32 compiled_pt2e_int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("-o", "--out", default="runs/bench/benchmark.json", help="JSON report; the Markdown goes beside it")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("export", help="export a training checkpoint: FP32 with adapters merged (stage 1) or INT8 (stage 2)")
    _add_data_args(p, training=False)
    p.add_argument("checkpoint", help="<run>/model.pt of stage 1 or 2")
    p.add_argument("--stage", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--preset", choices=["paper"])
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="parameter counts, trainable parameters per method, measured FP32/INT8 file sizes")
    p.add_argument("--arch", default="vit_b", choices=["small", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("pipeline", help="the main job: stage 0 (unless --checkpoint), stage 1, stage 2, evaluation, report")
    _add_data_args(p, training=False)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--checkpoint", help="start from this SAM (skips stage 0)")
    p.add_argument("--preset", choices=["paper"])
    p.add_argument("--epochs", type=int, nargs=3, default=[80, 25, 10], metavar=("E0", "E1", "E2"))
    p.add_argument("--install-models", action="store_true",
                   help="copy the final FP32 and INT8 models into the bundle's models/ (the defaults of infer, Slicer, MONAI Label)")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"adaqat {args.command}: error: {_engine('bundle_runner').root_cause(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
