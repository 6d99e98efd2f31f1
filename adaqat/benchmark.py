"""CPU benchmark of every inference route: FP32 vs INT8, eager vs onnxruntime vs torch.compile.

Routes (each measured in its own child process by :func:`adaqat.perf.measure_in_child`, so peak
memory is its own): eager FP32, eager INT8 (ours: oneDNN int8 Linears), eager fake-quant (the paper's
way of running INT8: weights on int8 levels, computed in float), onnxruntime FP32 and INT8 (the image
encoder in onnxruntime; the default of ``load_model`` for large encoders), the torch-free predictor FP32 and
INT8 (the whole segmenter in onnxruntime, no torch in the process), torch.compile FP32 and PT2E INT8
(``compiled_runtime``), and Hugging Face ``SamModel`` FP32 eager (``hf_sam``: what most users run). Speed-ups
are computed like with like (INT8 over FP32 of the same runtime) and, separately, against the transformers
route. Weights are random: speed, memory and size do not depend on their values.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from scripts.atomic import atomic_write_text

from adaqat.perf import measure_in_child

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "monai_bundle"

# name -> (model file, perf runtime, fake_quant)
ROUTES: dict[str, tuple[str, str, bool]] = {
    "eager_fp32": ("fp32", "eager", False),
    "eager_int8": ("int8", "eager", False),
    "eager_fake_quant": ("fp32", "eager", True),
    "ort_fp32": ("fp32", "ort", False),
    "ort_int8": ("int8", "ort", False),
    "onnx_fp32": ("fp32", "onnx", False),
    "onnx_int8": ("int8", "onnx", False),
    "compiled_fp32": ("fp32", "compiled", False),
    "compiled_pt2e_int8": ("fp32", "compiled_pt2e_int8", False),
    "transformers_fp32": ("fp32", "transformers", False),
}
# What most users run today: Hugging Face SamModel, FP32 eager (random weights, this architecture)
REFERENCE_ROUTE = "transformers_fp32"
# (label, FP32 route, INT8 route): the like-with-like speed-ups
COMPARISONS = (
    ("eager INT8 (ours) vs eager FP32", "eager_fp32", "eager_int8"),
    ("eager INT8 (ours) vs eager fake-quant (paper)", "eager_fake_quant", "eager_int8"),
    ("onnxruntime INT8 vs onnxruntime FP32", "ort_fp32", "ort_int8"),
    ("torch-free INT8 vs torch-free FP32 (whole segmenter in onnxruntime)", "onnx_fp32", "onnx_int8"),
    ("compiled PT2E INT8 vs compiled FP32", "compiled_fp32", "compiled_pt2e_int8"),
)
DEFAULT_IMAGE_SIZE = {"vit_b": 1024, "vit_l": 1024, "vit_h": 1024}


SHIPPED = "shipped"  # the bundle's own trained models (monai_bundle/models), measured as they ship


def build_models(arch: str, image_size: int | None, folder: Path, keep_float: Sequence[str]) -> dict[str, Path]:
    """Write the FP32 model and the INT8 artefact of one randomly initialised network (``shipped``: copy the
    bundle's trained pair, so the graphs the benchmark caches land in ``folder``, not in the bundle)."""
    import torch
    from scripts.model.segmenter import SamSegmenter

    if arch == SHIPPED:
        import shutil

        from scripts.model_files.load import default_model_path

        models = Path(default_model_path(BUNDLE_ROOT)).parent
        folder.mkdir(parents=True, exist_ok=True)
        return {kind: Path(shutil.copyfile(models / name, folder / name))
                for kind, name in (("fp32", "model.pt"), ("int8", "model_int8.pt"))}

    torch.manual_seed(0)
    return write_model_files(SamSegmenter(arch, image_size=image_size, prompt_mode="whole").eval(), folder, keep_float)


def write_model_files(network: Any, folder: Path, keep_float: Sequence[str]) -> dict[str, Path]:
    """``network`` as the two shipped files: FP32 ``model.pt`` and the INT8 artefact ``model_int8.pt``."""
    from scripts.model_files.export import export_fp32, export_ptq_int8

    folder.mkdir(parents=True, exist_ok=True)
    return {"fp32": export_fp32(network, None, folder / "model.pt"),
            "int8": export_ptq_int8(network, folder / "model_int8.pt", keep_float)}


def speedups(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """FP32-route latency / INT8-route latency for each comparison whose two routes were measured."""
    rows = []
    for label, slow, fast in COMPARISONS:
        a, b = results.get(slow, {}), results.get(fast, {})
        if "latency_s" in a and "latency_s" in b:
            rows.append({"comparison": label, "baseline": slow, "route": fast, "speedup": a["latency_s"] / b["latency_s"]})
    return rows


def versus_reference(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every measured route against ``REFERENCE_ROUTE``: its latency ratio and its peak-memory ratio."""
    ref = results.get(REFERENCE_ROUTE, {})
    if "latency_s" not in ref:
        return []
    return [{"route": name, "speedup": ref["latency_s"] / r["latency_s"], "memory_ratio": r["peak_rss_mib"] / ref["peak_rss_mib"]}
            for name, r in results.items() if "latency_s" in r and name != REFERENCE_ROUTE]


def benchmark_arch(arch: str, image_size: int | None, routes: Sequence[str], threads: int, repeats: int, warmup: int,
                   keep_float: Sequence[str], log=print, profile: bool = False,
                   facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure ``routes`` for one architecture; a route that fails is recorded with its error, not fatal.
    ``facts``: :func:`cpu_facts`, for the hardware floor."""
    from scripts.model.sam import checkpoint_arch

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = build_models(arch, image_size, Path(tmp), keep_float)
        for route in routes:
            which, runtime, fake_quant = ROUTES[route]
            kwargs = dict(image_size=image_size, threads=threads, runtime=runtime, fake_quant=fake_quant,
                          keep_float=keep_float)
            try:
                prepared = None
                if runtime in ("ort", "onnx"):  # build the cached .onnx first, so load_s is the user's every-day load
                    prepared = measure_in_child(str(files[which]), repeats=0, warmup=0, **kwargs)
                result = measure_in_child(str(files[which]), repeats=repeats, warmup=warmup, **kwargs)
                if prepared:
                    result["export_s"] = prepared["load_s"]
                if runtime.startswith("compiled") and result["warmup_all_s"]:
                    result["compile_s"] = result["warmup_all_s"][0]
                if profile and result.get("onnx_path"):  # the encoder graph's time by operator
                    from adaqat.op_profile import profile_graph

                    result["profile"] = profile_graph(result["onnx_path"], threads=threads, runs=max(2, warmup + 1))
            except Exception as exc:  # e.g. torchao not installed: report it, measure the rest
                result = {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
            results[route] = {"route": route, "model": which, **result}
            log(f"{arch} {route}: " + (f"{result['latency_s']:.3f} s" if "latency_s" in result else result["error"][:200]))
        spec = checkpoint_arch(files["fp32"])
    measured = {k: v for k, v in results.items() if "latency_s" in v}
    fastest = min(measured, key=lambda k: measured[k]["latency_s"]) if measured else None
    size = next((v["image_size"] for v in measured.values()), image_size or spec.image_size)
    return {"arch": arch, "image_size": size, "routes": results, "speedups": speedups(results),
            "versus_reference": versus_reference(results), "fastest": fastest,
            "hardware_floor": floor_of(spec, size, keep_float, threads, results, facts or cpu_facts())}


def floor_of(spec: Any, image_size: int, keep_float: Sequence[str], threads: int,
             results: dict[str, dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """The encoder's multiply-accumulates, the seconds they need at this CPU's peak (``facts``: :func:`cpu_facts`),
    and the fraction the fastest routes reach."""
    from adaqat.op_profile import encoder_macs, hardware_floor

    if not facts.get("cpu_mhz"):
        return {}
    int8_kinds = {"linear_proj", "linear_mlp"} | (set() if any("qkv" in p for p in keep_float) else {"linear_qkv"})
    floor = hardware_floor(encoder_macs(spec, image_size), int8_kinds, facts["cpu_flags"], facts["cpu_mhz"],
                           min(threads, facts["logical_cpus"] or threads))
    int8 = {k: v["latency_s"] for k, v in results.items() if "latency_s" in v and k.endswith("int8")}
    fp32 = {k: v["latency_s"] for k, v in results.items() if "latency_s" in v and k.endswith("fp32")}
    if int8:
        floor["fastest_int8"], best = min(int8.items(), key=lambda kv: kv[1])
        floor["fraction_of_int8_floor"] = floor["floor_int8_s"] / best
    if fp32:
        floor["fastest_fp32"], best = min(fp32.items(), key=lambda kv: kv[1])
        floor["fraction_of_fp32_floor"] = floor["floor_fp32_s"] / best
    return floor


def markdown(result: dict[str, Any]) -> str:
    """The report: one table per architecture, then the like-with-like speed-ups."""
    lines = ["# CPU inference benchmark", "",
             f"{result['threads']} threads, median (min-max) of {result['repeats']} runs after {result['warmup']} warm-up; "
             f"random weights; torch {result['machine']['torch']}, {result['machine']['cpu']}. "
             "eager = PyTorch eager; ort = image encoder in onnxruntime (decoder in torch); onnx = the whole segmenter "
             "in onnxruntime with numpy around it, in a process without torch (the torch-free predictor); "
             "compiled = image encoder through torch.compile; transformers = Hugging Face SamModel, FP32 eager.",
             (f"CPU: {result['machine']['cpu_model']} at {result['machine']['cpu_mhz']:.0f} MHz, {result['machine']['logical_cpus']} "
              f"logical CPUs, SIMD: {', '.join(result['machine']['cpu_flags']) or 'none listed'}."
              if result["machine"].get("cpu_model") else ""),
             "Kept in float (INT8 routes): " + (", ".join(f"`{p}`" for p in result["keep_float"]) or "nothing (every Linear INT8)") + ".",
             ""]
    for arch in result["archs"]:
        lines += [f"## {arch['arch']} at {arch['image_size']}x{arch['image_size']}", "",
                  "| route | median latency (s) | min-max (s) | images/s | peak RSS (MiB) | load (s) | export/compile (s) | file (MB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in arch["routes"].items():
            if "latency_s" not in r:
                lines.append(f"| {name} | failed: {r['error'].splitlines()[-1][:120] if r['error'] else ''} | | | | | | |")
                continue
            extra = r.get("export_s", r.get("compile_s"))
            size = "-" if r["runtime"] == "transformers" else f"{(r['file_bytes'] + r.get('onnx_bytes', 0)) / 1e6:.1f}"
            lines.append(f"| {name} | {r['latency_s']:.3f} | {r['latency_min_s']:.3f}-{r['latency_max_s']:.3f} | "
                         f"{r['images_per_s']:.3f} | {r['peak_rss_mib']:.0f} | {r['load_s']:.2f} | "
                         f"{'' if extra is None else f'{extra:.1f}'} | {size} |")
        lines += ["", "| like with like | speed-up |", "|---|---|"]
        lines += [f"| {s['comparison']} | {s['speedup']:.2f}x |" for s in arch["speedups"]]
        if arch.get("versus_reference"):
            lines += ["", f"| against {REFERENCE_ROUTE} (what most users run) | speed-up | peak memory |", "|---|---|---|"]
            lines += [f"| {v['route']} | {v['speedup']:.2f}x | {v['memory_ratio']:.2f}x |" for v in arch["versus_reference"]]
        lines += ["", f"Fastest route: **{arch['fastest']}**.", ""]
        floor = arch.get("hardware_floor") or {}
        if floor:
            lines += [f"Encoder work: {floor['gmac']:.1f} GMAC, {floor['gmac_int8']:.1f} of them in INT8 layers. At this CPU's "
                      f"peak ({floor['fp32_macs_per_cycle']} FP32 / {floor['int8_macs_per_cycle']} int8 MAC per cycle per core) "
                      f"they need {floor['floor_fp32_s']:.3f} s in FP32, {floor['floor_int8_s']:.3f} s with these layers in "
                      f"INT8, {floor['floor_all_int8_s']:.3f} s all in INT8."
                      + (f" {floor['fastest_int8']} reaches {100 * floor['fraction_of_int8_floor']:.0f} % of its floor"
                         if "fastest_int8" in floor else "")
                      + (f", {floor['fastest_fp32']} {100 * floor['fraction_of_fp32_floor']:.0f} % of the FP32 floor."
                         if "fastest_fp32" in floor else "."), ""]
        for name, r in arch["routes"].items():
            if r.get("profile"):
                from adaqat.op_profile import markdown as profile_markdown

                lines += [profile_markdown(r["profile"], f"{name}: image encoder by operator"), ""]
    lines += ["File (MB) of an ort/onnx route includes its cached .onnx graphs beside the model file.", ""]
    return "\n".join(lines)


def cpu_facts() -> dict[str, Any]:
    """Model name, clock and the SIMD extensions that decide INT8 speed (VNNI doubles int8 GEMM throughput)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)}
    flags = set(first.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"cpu_model": first.get("model name", ""), "cpu_mhz": float(first.get("cpu MHz") or 0),
            "cpu_flags": [f for f in wanted if f in flags], "logical_cpus": os.cpu_count()}


def run(archs: Sequence[str], out: str | Path, *, image_size: int | None = None, routes: Sequence[str] | None = None,
        threads: int = 2, repeats: int = 5, warmup: int = 1, keep_float: Sequence[str] | None = None,
        log=print, profile: bool = False) -> dict[str, Any]:
    """Benchmark ``archs`` and write ``out`` (JSON) and the same name with ``.md``, atomically."""
    import torch
    from scripts.model.factory import PAPER_KEEP_FLOAT

    routes = list(routes or ROUTES)
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise ValueError(f"unknown routes {unknown}; choose from {list(ROUTES)}")
    keep_float = list(PAPER_KEEP_FLOAT) if keep_float is None else list(keep_float)
    start = time.time()
    facts = cpu_facts()
    result = {
        "threads": threads, "repeats": repeats, "warmup": warmup, "keep_float": keep_float, "weights": "random",
        "archs": [benchmark_arch(a, image_size or DEFAULT_IMAGE_SIZE.get(a), routes, threads, repeats, warmup, keep_float, log,
                                 profile, facts) for a in archs],
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), **facts},
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "wall_s": None,
    }
    result["wall_s"] = time.time() - start
    out = Path(out)
    atomic_write_text(out, json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    return result


__all__ = ["COMPARISONS", "REFERENCE_ROUTE", "ROUTES", "build_models", "markdown", "run", "speedups", "versus_reference",
           "write_model_files"]
