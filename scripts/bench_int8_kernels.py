#!/usr/bin/env python
"""Measure candidate INT8 linear kernels against FP32 ``F.linear`` on this CPU, for SAM ViT-B shapes.

Why: ``monai_bundle/scripts/int8_runtime.py`` must run the quantized layers with a real int8 kernel,
and which one is fastest depends on the CPU, the torch build and the thread count. This tool
records the evidence for that choice (median milliseconds and the error against an FP32 reference
computed with the same dequantized weight) in a JSON file.

Usage::

    .venv/bin/python scripts/bench_int8_kernels.py --out bench_int8_kernels.json [--threads 2]
        [--repeats 10] [--no-compile]

Candidates (all take an FP32 activation and return FP32, weight int8 symmetric per output channel):

* ``fp32``               ``F.linear`` with the dequantized float weight (the baseline).
* ``fbgemm_dynamic``     ``quantized::linear_dynamic`` on a ``linear_prepack``-ed per-channel qint8
                         weight, quantized engine ``fbgemm`` (also ``x86`` and ``onednn`` engines).
                         Activation: dynamic per-tensor asymmetric uint8, inside the op.
* ``int_mm_per_token``   per-token symmetric int8 activation quantization (eager ops) +
                         ``torch._int_mm`` (int8 x int8 -> int32) + float rescale. The matmul alone
                         is reported as ``int_mm_only``.
* ``onednn_qlinear``     ``onednn::qlinear_pointwise`` (the x86 inductor int8 kernel) on a
                         ``onednn::qlinear_prepack``-ed weight, per-tensor uint8 activation
                         quantized with eager ops.
* ``weight_int8pack_mm`` ``aten::_weight_int8pack_mm``: weight-only int8, activation stays FP32.
* ``torchao_*``          torchao ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` /
                         ``Int8WeightOnlyConfig``, eager and (unless ``--no-compile``) ``torch.compile``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# SAM ViT-B linear shapes: (M tokens, K in_features, N out_features). M=4096 is the 64x64 token grid
# of a 1024x1024 image (batch 1); M=256 is a small case (e.g. a 16x16 grid / decoder-sized input).
SHAPES: list[tuple[int, int, int]] = [
    (4096, 768, 2304),  # attn.qkv
    (4096, 768, 768),  # attn.proj
    (4096, 768, 3072),  # mlp.lin1
    (4096, 3072, 768),  # mlp.lin2
    (256, 768, 2304),
    (256, 768, 768),
    (256, 768, 3072),
    (256, 3072, 768),
]


def time_interleaved(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall times (ms) of every ``fn()``, run round-robin.

    Why round-robin: on a shared 2-vCPU VM the speed drifts by 2x over seconds (CPU steal); timing
    the candidates in turn within each round exposes all of them to the same drift.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 in [-127, 127] (same rule as the bundle's quantizer)."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def make_candidates(
    wq: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, with_compile: bool
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Build every candidate as ``fn(x) -> y``; failures are recorded by the caller."""
    n, k = wq.shape
    w_deq = wq.float() * scale[:, None]
    cands: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    errors: dict[str, str] = {}

    cands["fp32"] = lambda x: F.linear(x, w_deq, bias)

    # (a) fbgemm / x86 / onednn dynamic quantized linear (legacy quantized-tensor API).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated; we still measure it
        qw = torch._make_per_channel_quantized_tensor(wq, scale.double(), torch.zeros(n, dtype=torch.long), 0)
    for engine in ("fbgemm", "x86", "onednn"):
        try:
            torch.backends.quantized.engine = engine
            packed = torch.ops.quantized.linear_prepack(qw, bias)

            def dyn(x: torch.Tensor, packed=packed, engine=engine) -> torch.Tensor:
                torch.backends.quantized.engine = engine
                return torch.ops.quantized.linear_dynamic(x, packed, False)

            cands[f"{engine}_dynamic"] = dyn
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            errors[f"{engine}_dynamic"] = repr(exc)

    # (b) torch._int_mm with per-token symmetric activation quantization.
    wq_t = wq.t()  # [K, N] view of the [N, K] weight (column-major), what _int_mm wants as mat2

    def int_mm_per_token(x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True)  # one pass instead of abs() + amax()
        amax = torch.maximum(-lo, hi).clamp_min_(1e-8)
        xq = torch.round(x * (127.0 / amax)).to(torch.int8)  # |x*127/amax| <= 127: no clamp needed
        acc = torch._int_mm(xq, wq_t)
        return torch.addcmul(bias, acc, amax * (scale / 127.0))

    cands["int_mm_per_token"] = int_mm_per_token
    cands["_int_mm_only"] = lambda x: torch._int_mm(x, wq_t)  # x is pre-quantized int8 (see caller)

    # onednn::qlinear_pointwise (the kernel inductor uses for x86 int8 linears).
    try:
        w_packed = torch.ops.onednn.qlinear_prepack(wq, None)
        w_zp = torch.zeros(n, dtype=torch.long)

        def onednn_qlinear(x: torch.Tensor) -> torch.Tensor:
            lo, hi = torch.aminmax(x)
            lo, hi = min(lo.item(), 0.0), max(hi.item(), 0.0)
            xs = max((hi - lo) / 255.0, 1e-8)
            zp = int(round(-lo / xs))
            xq = torch.round(x / xs).add_(zp).clamp_(0, 255).to(torch.uint8)
            return torch.ops.onednn.qlinear_pointwise(
                xq, xs, zp, w_packed, scale, w_zp, bias, 1.0, 0, torch.float32, "none", [], ""
            )

        cands["onednn_qlinear"] = onednn_qlinear
    except Exception as exc:  # noqa: BLE001
        errors["onednn_qlinear"] = repr(exc)

    # (c) weight-only int8.
    cands["weight_int8pack_mm"] = lambda x: torch.ops.aten._weight_int8pack_mm(x, wq, scale) + bias

    # (d) torchao.
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        base = nn.Linear(k, n)
        with torch.no_grad():
            base.weight.copy_(w_deq)
            base.bias.copy_(bias)
        for name, cfg in (
            ("torchao_da8w8", Int8DynamicActivationInt8WeightConfig()),
            ("torchao_w8", Int8WeightOnlyConfig()),
        ):
            try:
                m = copy.deepcopy(base)
                quantize_(m, cfg)
                cands[f"{name}_eager"] = m
                if with_compile:
                    cands[f"{name}_compile"] = torch.compile(copy.deepcopy(m), dynamic=False)
            except Exception as exc:  # noqa: BLE001
                errors[name] = repr(exc)
    except Exception as exc:  # noqa: BLE001
        errors["torchao"] = repr(exc)
    torch.backends.quantized.engine = "x86"
    cands["_errors"] = errors  # type: ignore[assignment]
    return cands


def bench_shape(m: int, k: int, n: int, repeats: int, with_compile: bool, only: set[str] | None = None) -> dict:
    """Time every candidate on one shape; report median ms and max relative error vs FP32."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * (1.0 / k**0.5)
    bias = torch.randn(n, generator=g) * 0.01
    wq, scale = quantize_weight(w)
    x = torch.randn(m, k, generator=g)
    # A second input with a few outlier channels, as transformer activations have; per-tensor
    # activation quantization suffers there, per-token does not.
    x_out = x.clone()
    x_out[:, :4] *= 30.0
    cands = make_candidates(wq, scale, bias, with_compile)
    errors = cands.pop("_errors")  # type: ignore[arg-type]
    if only:
        cands = {name: fn for name, fn in cands.items() if name == "fp32" or name.lstrip("_") in only}
    xq_pre = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    result: dict = {"M": m, "K": k, "N": n, "ms": {}, "rel_err": {}, "rel_err_outliers": {}, "errors": errors}
    with torch.inference_mode():
        ref = cands["fp32"](x)
        ref_out = cands["fp32"](x_out)
    runnable: dict[str, Callable[[], torch.Tensor]] = {}
    for name, fn in cands.items():
        try:
            t0 = time.perf_counter()
            arg = xq_pre if name == "_int_mm_only" else x
            with torch.inference_mode():
                y = fn(arg)
                y_out = None if name == "_int_mm_only" else fn(x_out)
            if name.endswith("_compile"):
                result.setdefault("compile_first_call_s", {})[name] = round(time.perf_counter() - t0, 1)
            if y_out is not None:
                result["rel_err"][name] = round(float((y - ref).norm() / ref.norm()), 5)
                result["rel_err_outliers"][name] = round(float((y_out - ref_out).norm() / ref_out.norm()), 5)
            runnable[name.lstrip("_")] = lambda fn=fn, arg=arg: fn(arg)
        except Exception as exc:  # noqa: BLE001
            errors[name] = repr(exc)
    # weight_int8pack_mm's fp32 path is ~40x slower than fp32; a few rounds are enough to show it.
    slow = {k: v for k, v in runnable.items() if k == "weight_int8pack_mm"}
    fast = {k: v for k, v in runnable.items() if k not in slow}
    times = time_interleaved(fast, repeats)
    times.update(time_interleaved(slow, min(repeats, 3), warmup=1))
    result["ms"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result["ms_min"] = {k: round(min(v), 3) for k, v in times.items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write the measurements to")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--only", default="", help="comma-separated candidate names to time (fp32 always)")
    ap.add_argument("--large-only", action="store_true", help="time only the M=4096 shapes")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    results = []
    only = {name.strip() for name in args.only.split(",") if name.strip()} or None
    shapes = [s for s in SHAPES if s[0] == 4096] if args.large_only else SHAPES
    for m, k, n in shapes:
        r = bench_shape(m, k, n, args.repeats, not args.no_compile and (only is None or any("compile" in o for o in only)), only)
        results.append(r)
        print(f"M={m} K={k} N={n} median ms: " + ", ".join(f"{a}={b:.2f}" for a, b in r["ms"].items()), flush=True)
    report = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "loadavg_after": os.getloadavg(),  # above --threads means other jobs competed for the CPU
        "results": results,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
