"""Where an ONNX graph's time goes, by operator: onnxruntime's own profiler, summed per op type and per group.

    adaqat profile MODEL.pt [--part encoder] [--threads 2] [--runs 3] -o runs/bench/profile.json

Why not torch.profiler: the route to make fast is the onnxruntime one (the default for large encoders and the
torch-free predictor), and only onnxruntime's profiler sees its fused and quantized kernels
(``MatMulIntegerToFloat``, ``FusedMatMul``, ...). The graph is the one ``load_model`` caches beside the model.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

# op type -> what it is in SAM's image encoder (an Add is either a residual or the relative-position bias)
GROUPS = {
    "MatMulIntegerToFloat": "INT8 linear layers", "MatMulInteger": "INT8 linear layers", "DynamicQuantizeMatMul": "INT8 linear layers",
    "Gemm": "float linear layers",
    "MatMul": "attention matmuls (float)", "FusedMatMul": "attention matmuls (float)", "Attention": "attention matmuls (float)",
    "Softmax": "attention softmax",
    "Einsum": "relative-position terms", "Add": "adds (residuals, relative-position bias)",
    "ReduceMin": "activation quantization", "ReduceMax": "activation quantization", "QuantizeLinear": "activation quantization",
    "DynamicQuantizeLinear": "activation quantization", "DequantizeLinear": "activation quantization",
    "LayerNormalization": "layer norm", "SkipLayerNormalization": "layer norm", "Gelu": "GELU", "BiasGelu": "GELU",
    "Conv": "patch embedding / neck convolutions",
}
LAYOUT = {"Transpose", "Reshape", "Split", "Slice", "Concat", "Pad", "Squeeze", "Unsqueeze", "Gather", "Expand", "Cast", "Shape"}


def encoder_macs(arch: Any, image_size: int | None = None) -> dict[str, float]:
    """Multiply-accumulates of SAM's image encoder at ``image_size`` (``SamArch`` sizes), by kind of work.

    Windowed attention (qkv, scores, proj) runs on the grid padded to a multiple of the window, as segment-anything
    pads it; the MLP after it on the grid itself.
    """
    size = image_size or arch.image_size
    grid, dim, win = size // 16, arch.embed_dim, arch.window_size
    padded = -(-grid // win) * win
    tokens = {True: grid * grid, False: padded * padded}  # global block?
    linear = {"qkv": 3 * dim * dim, "proj": dim * dim, "mlp": 2 * 4 * dim * dim}
    macs = {f"linear_{k}": 0.0 for k in linear} | {"attention": 0.0}
    for block in range(arch.depth):
        is_global = block in arch.global_attn_indexes
        n = tokens[is_global]
        for k, per_token in linear.items():  # the MLP runs after the windows are undone: unpadded tokens
            macs[f"linear_{k}"] += (grid * grid if k == "mlp" else n) * per_token
        keys = grid * grid if is_global else win * win
        macs["attention"] += 2 * n * keys * dim  # q.k^T and p.v over all heads
    out = arch.prompt_embed_dim
    macs["convolutions"] = grid * grid * (3 * 16 * 16 * dim + dim * out + 9 * out * out)
    return macs


# Multiply-accumulates per cycle per core: FP32 FMA (2 ports x 8 lanes with AVX2, x 16 with AVX-512); int8 without
# VNNI goes through vpmaddubsw + vpmaddwd + vpaddd (about half the pair rate), with VNNI one vpdpbusd per 32/64 pairs.
PEAK_MACS_PER_CYCLE = {"fp32": {"avx2": 16, "avx512f": 32}, "int8": {"avx2": 32, "avx_vnni": 64, "avx512_vnni": 128}}


def hardware_floor(macs: dict[str, float], int8_kinds: set[str], cpu_flags: Sequence[str], mhz: float,
                   cores: int) -> dict[str, float]:
    """Seconds the encoder's multiply-accumulates need at the cores' peak: all FP32, and with ``int8_kinds`` in INT8."""
    flags = set(cpu_flags)
    fp32 = max((v for k, v in PEAK_MACS_PER_CYCLE["fp32"].items() if k in flags), default=8)
    int8 = max((v for k, v in PEAK_MACS_PER_CYCLE["int8"].items() if k in flags), default=fp32)
    hz = mhz * 1e6 * cores
    total = sum(macs.values())
    in_int8 = sum(v for k, v in macs.items() if k in int8_kinds)
    return {"gmac": total / 1e9, "gmac_int8": in_int8 / 1e9, "fp32_macs_per_cycle": fp32, "int8_macs_per_cycle": int8,
            "floor_fp32_s": total / (fp32 * hz), "floor_int8_s": in_int8 / (int8 * hz) + (total - in_int8) / (fp32 * hz),
            "floor_all_int8_s": total / (int8 * hz)}


def group_of(op: str) -> str:
    return GROUPS.get(op, "layout (transpose, reshape, split, slice, concat, pad)" if op in LAYOUT else "other")


def profile_graph(onnx_path: str | os.PathLike, threads: int = 2, runs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Run ``onnx_path`` ``runs`` times on random inputs; the last run's kernel time per op type and per group."""
    import numpy as np
    import onnxruntime as ort

    from scripts.deploy.onnx_files import open_session

    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(onnx_path, threads, profile_prefix=str(Path(tmp) / "ort"))
        rng = np.random.default_rng(seed)
        feeds = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
                 for i in session.get_inputs()}
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            walls.append(time.perf_counter() - start)
        events = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-1]
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e6
            count[e["args"]["op_name"]] += 1
    total = sum(per_op.values())
    per_group = collections.Counter()
    for op, seconds in per_op.items():
        per_group[group_of(op)] += seconds
    return {"onnx_path": os.fspath(onnx_path), "threads": threads, "runs": runs, "wall_s": walls, "kernel_s": total,
            "ops": [{"op": op, "seconds": s, "share": s / total, "nodes": count[op], "group": group_of(op)}
                    for op, s in per_op.most_common()],
            "groups": [{"group": g, "seconds": s, "share": s / total} for g, s in per_group.most_common()],
            "onnxruntime": ort.__version__}


def markdown(profile: dict[str, Any], title: str) -> str:
    lines = [f"#### {title}", "", f"Kernel time of the last of {profile['runs']} runs: {profile['kernel_s']:.2f} s "
             f"({profile['threads']} threads; wall {min(profile['wall_s']):.2f}-{max(profile['wall_s']):.2f} s).", "",
             "| group | seconds | share |", "|---|---|---|"]
    lines += [f"| {g['group']} | {g['seconds']:.2f} | {100 * g['share']:.1f} % |" for g in profile["groups"]]
    lines += ["", "| op type | nodes | seconds | share |", "|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['nodes']} | {o['seconds']:.3f} | {100 * o['share']:.1f} % |" for o in profile["ops"][:14]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", help="an .onnx file (e.g. the encoder load_model cached beside a model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("-o", "--out", required=True, help="JSON; the Markdown goes beside it")
    args = parser.parse_args(argv)
    profile = profile_graph(args.graph, args.threads, args.runs)
    from scripts.atomic import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out, json.dumps(profile, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(profile, Path(args.graph).name))
    print(markdown(profile, Path(args.graph).name))
    return 0


__all__ = ["GROUPS", "PEAK_MACS_PER_CYCLE", "encoder_macs", "group_of", "hardware_floor", "markdown", "profile_graph"]
