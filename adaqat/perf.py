"""Measure one model file's CPU speed and memory in a fresh child process.

Why a child process: peak resident memory (the process's high-water mark, VmHWM) never goes down, so a
model measured after another in the same process would inherit the other's peak. Each measurement
therefore loads the file with :func:`scripts.model_files.load.load_model` in its own interpreter, runs
``warmup`` untimed and ``repeats`` timed forward passes on one fixed input, and prints its result
as JSON on its last line of stdout.

    python -m adaqat.perf MODEL.pt --threads 2 --repeats 5     # from the bundle root
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# eager / ort / onnx: load_model's runtimes (onnx = the torch-free predictor, timed in a process without torch);
# compiled*: the torch.compile routes of adaqat.compiled_runtime; transformers: Hugging Face SamModel (adaqat.hf_sam).
RUNTIMES = ("eager", "ort", "onnx", "compiled", "compiled_pt2e_int8", "transformers")
# The package this module lives in (``scripts`` in the bundle, ``adaqat_bundle.scripts`` installed) and
# the folder that must be on sys.path for the child to import it by the same name.
_PACKAGE = __package__ or "scripts"
_IMPORT_ROOT = Path(__file__).resolve().parents[len(_PACKAGE.split("."))]


def _peak_rss_mib() -> float:
    # Linux: VmHWM, this process's own high-water mark. Not ru_maxrss: Linux carries the parent's peak
    # into a child across fork + exec, so a child started by a large process (a training study) would
    # report the parent's peak instead of the model's.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # elsewhere ru_maxrss: KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure(model_path: str, *, image_size: int | None = None, threads: int = 2, repeats: int = 5, warmup: int = 1,
            runtime: str = "eager", prompt_mode: str = "whole", fake_quant: bool = False,
            keep_float: Sequence[str] | None = None) -> dict[str, Any]:
    """Load ``model_path`` and time forward passes **in this process** (use :func:`measure_in_child`).

    ``fake_quant``: fake-quantize the loaded float model's Linears with the paper's float-kept list
    (weights rounded to int8 levels, computed in float): the paper's way of running INT8.
    ``keep_float``: the float-kept patterns for ``fake_quant`` and ``compiled_pt2e_int8`` (default: the paper's).
    ``repeats=0`` only loads (e.g. to build the cached .onnx of the ``ort`` runtime outside the timing).
    Compiled runtimes compile in the first warm-up pass: ``warmup_all_s[0]`` is the compile time.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if repeats < 0 or warmup < 0:
        raise ValueError(f"need repeats >= 0 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if runtime == "onnx" and repeats > 0:
        return _measure_predictor(model_path, image_size, threads, repeats, warmup, prompt_mode)
    import torch

    torch.set_num_threads(threads)
    from scripts.model.factory import PAPER_KEEP_FLOAT
    from scripts.model_files.load import load_model

    kept = list(PAPER_KEEP_FLOAT) if keep_float is None else list(keep_float)
    start = time.perf_counter()
    if runtime == "transformers":  # the model file only names the architecture: SamModel has random weights
        from adaqat.hf_sam import HfSamSegmenter

        network = HfSamSegmenter(load_model(model_path, runtime="eager").arch)
    else:  # onnx with repeats=0 builds the predictor's two graphs beside the model
        network = load_model(model_path, prompt_mode=prompt_mode, runtime=runtime if runtime in ("ort", "onnx") else "eager")
    if fake_quant:
        from scripts.quantization.fake_quant import apply_fake_quant

        apply_fake_quant(network, keep_float=kept, per_channel=True)
    if runtime == "compiled":
        from adaqat.compiled_runtime import compile_encoder

        compile_encoder(network)
    elif runtime == "compiled_pt2e_int8":
        from adaqat.compiled_runtime import pt2e_int8_encoder

        pt2e_int8_encoder(network, keep_float=kept)
    base = _base(model_path, runtime, fake_quant, prompt_mode, threads, repeats, warmup, time.perf_counter() - start)
    sam = getattr(network, "sam", None)  # the study's UNet baseline has no SAM encoder (nor an .onnx beside it)
    onnx_path = getattr(getattr(sam, "image_encoder", None), "onnx_path", None)
    if onnx_path:
        base["onnx_bytes"], base["onnx_path"] = Path(onnx_path).stat().st_size, str(onnx_path)
    if repeats == 0:
        return {**base, "peak_rss_mib": _peak_rss_mib()}
    size = int(image_size or network.image_size)
    image = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for _ in range(warmup + repeats):
            t = time.perf_counter()
            out = network(image)
            times.append(time.perf_counter() - t)
    if hasattr(network, "attn_implementation"):
        base["attn_implementation"] = network.attn_implementation
    # A cheap fingerprint of the output, so a caller can see two routes computed the same thing.
    return {**base, **_timing(times, warmup), "image_size": size, "peak_rss_mib": _peak_rss_mib(),
            "output_mean": float(out.float().mean())}


def _base(model_path: str, runtime: str, fake_quant: bool, prompt_mode: str, threads: int, repeats: int, warmup: int,
          load_s: float) -> dict[str, Any]:
    return {"model_path": os.fspath(model_path), "runtime": runtime, "fake_quant": bool(fake_quant),
            "prompt_mode": prompt_mode, "threads": threads, "repeats": repeats, "warmup": warmup, "load_s": load_s,
            "file_bytes": Path(model_path).stat().st_size}


def _timing(times: list[float], warmup: int) -> dict[str, Any]:
    warm, timed = times[:warmup], times[warmup:]
    median = statistics.median(timed)
    return {"latency_s": median, "latency_min_s": min(timed), "latency_max_s": max(timed), "latency_all_s": timed,
            "warmup_all_s": warm, "images_per_s": 1.0 / median}


def _measure_predictor(model_path: str, image_size: int | None, threads: int, repeats: int, warmup: int,
                       prompt_mode: str) -> dict[str, Any]:
    """The torch-free predictor (both graphs in onnxruntime, numpy around them): no torch in this process."""
    import numpy as np

    from scripts.deploy.predictor import OnnxSegmenter

    start = time.perf_counter()
    segmenter = OnnxSegmenter(model_path, threads=threads)
    load_s = time.perf_counter() - start
    size = int(image_size or segmenter.image_size)
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    times = []
    for _ in range(warmup + repeats):
        t = time.perf_counter()
        out = segmenter.logits(image, prompt_mode=prompt_mode)
        times.append(time.perf_counter() - t)
    onnx_bytes = sum(Path(p).stat().st_size for p in (segmenter.encoder_path, segmenter.decoder_path))
    return {**_base(model_path, "onnx", False, prompt_mode, threads, repeats, warmup, load_s), "onnx_bytes": onnx_bytes,
            "onnx_path": str(segmenter.encoder_path), **_timing(times, warmup), "image_size": size,
            "peak_rss_mib": _peak_rss_mib(), "torch_imported": "torch" in sys.modules, "output_mean": float(np.mean(out))}


def measure_in_child(model_path: str, *, image_size: int | None = None, threads: int = 2, repeats: int = 5,
                     warmup: int = 1, runtime: str = "eager", prompt_mode: str = "whole", fake_quant: bool = False,
                     keep_float: Sequence[str] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """:func:`measure` run in a fresh interpreter, so its ``peak_rss_mib`` is this model's own.

    Returns latency median (``latency_s``) and every timed run (``latency_all_s``), ``images_per_s``,
    ``peak_rss_mib``, ``load_s``, ``file_bytes``, ``threads``, ``runtime``, ``image_size``.
    A failing child raises RuntimeError with its stderr tail.
    """
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    cmd = [sys.executable, "-m", f"{_PACKAGE}.perf", os.fspath(model_path), "--threads", str(threads),
           "--repeats", str(repeats), "--warmup", str(warmup), "--runtime", runtime, "--prompt-mode", prompt_mode]
    if image_size is not None:
        cmd += ["--image-size", str(image_size)]
    if fake_quant:
        cmd.append("--fake-quant")
    if keep_float is not None:
        cmd += ["--keep-float-json", json.dumps(list(keep_float))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_IMPORT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # OpenMP reads its pool size at start-up; set it too so every thread pool agrees with ``threads``.
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {model_path} ({runtime}) failed with exit code {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"measuring {model_path} ({runtime}): the child printed no result\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_path")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES)
    parser.add_argument("--prompt-mode", default="whole")
    parser.add_argument("--fake-quant", action="store_true")
    parser.add_argument("--keep-float-json", help="JSON list of float-kept patterns for --fake-quant")
    args = parser.parse_args(argv)
    result = measure(args.model_path, image_size=args.image_size, threads=args.threads, repeats=args.repeats,
                     warmup=args.warmup, runtime=args.runtime, prompt_mode=args.prompt_mode, fake_quant=args.fake_quant,
                     keep_float=None if args.keep_float_json is None else json.loads(args.keep_float_json))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RUNTIMES", "measure", "measure_in_child"]
