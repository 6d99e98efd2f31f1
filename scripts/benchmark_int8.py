#!/usr/bin/env python
"""CPU latency, peak memory, load time and file size: FP32 vs real INT8 vs the paper's fake-quant INT8.

Each variant runs in its own process so that its peak resident memory is its own. All three run the
same way (eager PyTorch, same threads, same input, whole-image box, one decoder pass), so the ratio
compares like with like. Weights are random: speed and size do not depend on their values.

    .venv/bin/python scripts/benchmark_int8.py --arch vit_b --image-size 1024 --out runs/bench/int8_vit_b.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monai_bundle"))

VARIANTS = ("fp32", "int8", "fake_quant")


def build_files(arch: str, image_size: int, folder: Path, keep_float: list[str]) -> dict[str, Path]:
    """Write the FP32 model and the INT8 artefact of one randomly initialised network."""
    import torch

    from scripts.atomic import atomic_torch_save
    from scripts.int8_export import export_int8_state, save_int8
    from scripts.network import SamSegmenter
    from scripts.quantizer import apply_fake_quant

    torch.manual_seed(0)
    network = SamSegmenter(arch, image_size=image_size, prompt_mode="whole").eval()
    fp32 = atomic_torch_save({k: v.clone() for k, v in network.state_dict().items()}, folder / "model.pt")
    quantized = copy.deepcopy(network)
    names = apply_fake_quant(quantized, keep_float=keep_float, per_channel=True)
    int8 = save_int8(export_int8_state(quantized, names, per_channel=True), folder / "model_int8.pt",
                     extra_meta={"arch": network.arch.to_dict(), "prompt_mode": "whole", "refine_margin": 10.0})
    return {"fp32": Path(fp32), "int8": Path(int8)}


def markdown(result: dict) -> str:
    rows = ["| variant | median latency (s) | images/s | peak RSS (MiB) | load (s) | file (MB) |", "|---|---|---|---|---|---|"]
    for v in result["variants"]:
        size = result["file_bytes"].get("int8" if v["variant"] == "int8" else "fp32") / 1e6
        rows.append(f"| {v['variant']} | {v['latency_s_median']:.3f} | {v['images_per_s']:.3f} | {v['peak_rss_mib']:.0f} | {v['load_s']:.2f} | {size:.1f} |")
    s = result["speedup_int8_vs_fp32"]
    return "\n".join([f"{result['arch']} at {result['image_size']}x{result['image_size']}, {result['threads']} threads, eager PyTorch, "
                      f"median of {result['repeats']} runs after {result['warmup']} warm-up", "", *rows, "",
                      f"INT8 speed-up over FP32: {s:.2f}x; over fake-quant: {result['speedup_int8_vs_fake_quant']:.2f}x", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--keep-float", nargs="*", default=None, help="float-kept patterns (default: the paper's list)")
    parser.add_argument("--out", default="runs/bench/int8_benchmark.json")
    args = parser.parse_args(argv)

    from scripts.model_factory import PAPER_KEEP_FLOAT
    from scripts.perf import measure_in_child

    keep_float = list(PAPER_KEEP_FLOAT) if args.keep_float is None else args.keep_float
    import platform

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(args.arch, args.image_size, Path(tmp), keep_float)
        sizes = {k: p.stat().st_size for k, p in files.items()}
        variants = []
        for variant in VARIANTS:
            path = files["int8" if variant == "int8" else "fp32"]
            measured = measure_in_child(str(path), image_size=args.image_size, threads=args.threads, repeats=args.repeats,
                                        warmup=args.warmup, fake_quant=variant == "fake_quant", keep_float=keep_float)
            variants.append({"variant": variant, **measured, "latency_s_median": measured["latency_s"]})
            print(f"{variant}: {measured['latency_s']:.3f} s", file=sys.stderr)
    by_name = {v["variant"]: v for v in variants}
    result = {
        "arch": args.arch, "image_size": args.image_size, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "keep_float": keep_float, "file_bytes": sizes, "variants": variants,
        "speedup_int8_vs_fp32": by_name["fp32"]["latency_s_median"] / by_name["int8"]["latency_s_median"],
        "speedup_int8_vs_fake_quant": by_name["fake_quant"]["latency_s_median"] / by_name["int8"]["latency_s_median"],
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quantized_engine": torch.backends.quantized.engine},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    from scripts.atomic import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
