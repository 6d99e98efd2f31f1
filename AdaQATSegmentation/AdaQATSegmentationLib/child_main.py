"""What runs in the module's child process: the bundle's inference config, or a model download.

Run as a script by ``bundle_process`` (``PythonSlicer child_main.py infer|download ...``), never imported
by Slicer itself: this is the only file of the module that imports MONAI (inside the child). Inference is
``monai.bundle``'s ``ConfigWorkflow`` on the bundle's ``configs/inference.json``, with the same overrides
``python -m monai.bundle run`` would take; a download is ``monai.apps.download_url`` with its hash check.
Errors end the process with one line ``error: <what went wrong>``, which the module shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# MONAI wraps an error raised inside a config expression in these; the user needs the error inside.
_CONFIG_WRAPPERS = ("Failed to evaluate", "Failed to instantiate")


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None and str(exc).startswith(_CONFIG_WRAPPERS):
        exc = exc.__cause__
    return exc


def infer(args: argparse.Namespace) -> None:
    """Segment ``args.image`` with the bundle at ``args.bundle``; masks go to ``args.output``."""
    from monai.bundle import ConfigWorkflow

    root = Path(args.bundle).resolve()
    sys.path.insert(0, str(root))
    overrides: dict = {"dataset_dir": str(Path(args.image).resolve()), "output_dir": str(Path(args.output).resolve())}
    if args.model:
        overrides["model_path"] = str(Path(args.model).resolve())
    if args.box:
        overrides["box"] = [float(v) for v in args.box]
    if args.prompt:
        overrides["prompt_mode"] = args.prompt
    if args.device:
        overrides["device"] = f"$torch.device({args.device!r})"
    if args.threshold is not None:  # the quality report's review threshold (null in the config: the calibration's)
        overrides["quality_threshold"] = float(args.threshold)
    print("overrides", json.dumps(overrides), flush=True)
    configs = root / "configs"
    optional = {key: str(configs / name) for key, name in (("meta_file", "metadata.json"), ("logging_file", "logging.conf"))
                if (configs / name).is_file()}
    workflow = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer", bundle_root=str(root),
                              **optional, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    print("masks written to", overrides["output_dir"], flush=True)


def download(args: argparse.Namespace) -> None:
    """``monai.apps.download_url``: a temporary file, the hash checked, then moved into place."""
    from monai.apps import download_url

    download_url(args.url, args.target, hash_val=args.hash or None, hash_type=args.hash_type, progress=True)
    print("downloaded", args.target, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--model")
    p.add_argument("--box", nargs=4)
    p.add_argument("--prompt", choices=["two_pass", "whole", "box"])
    p.add_argument("--device")
    p.add_argument("--threshold", type=float, help="predicted Dice under which a mask is marked review")
    p.set_defaults(func=infer)
    p = sub.add_parser("download")
    p.add_argument("url")
    p.add_argument("target")
    p.add_argument("--hash", default="")
    p.add_argument("--hash-type", default="sha256")
    p.set_defaults(func=download)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the module shows this line; the log above it holds the traceback's context
        print(f"error: {_root_cause(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
