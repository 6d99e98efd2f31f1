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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2))
    out.with_suffix(".md").write_text(markdown(profile, Path(args.graph).name))
    print(markdown(profile, Path(args.graph).name))
    return 0


__all__ = ["GROUPS", "group_of", "markdown", "profile_graph"]
