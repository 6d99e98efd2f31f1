"""The benchmark's report: structure, ratios computed from the measured numbers, peak memory per route.

No timing assertions: speed claims come from the benchmark's own output files, not from tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import optional_module

from adaqat import benchmark
from adaqat.perf import measure_in_child


def test_speedups_are_fp32_over_int8_of_the_same_runtime_only() -> None:
    results = {"eager_fp32": {"latency_s": 8.0}, "eager_int8": {"latency_s": 4.0}, "eager_fake_quant": {"latency_s": 10.0},
               "ort_fp32": {"latency_s": 3.0}, "ort_int8": {"error": "x"}}
    rows = {r["comparison"]: r["speedup"] for r in benchmark.speedups(results)}
    assert rows == {"eager INT8 (ours) vs eager FP32": 2.0, "eager INT8 (ours) vs eager fake-quant (paper)": 2.5}


def test_measure_in_child_reports_its_own_numbers(tmp_path: Path) -> None:
    files = benchmark.build_models("small", 128, tmp_path, ["*image_encoder.blocks.*.attn.qkv*"])
    r = measure_in_child(str(files["int8"]), threads=1, repeats=2, warmup=1, runtime="eager")
    assert len(r["latency_all_s"]) == 2 and r["latency_s"] == pytest.approx(sorted(r["latency_all_s"])[0] / 2 + sorted(r["latency_all_s"])[1] / 2)
    assert r["images_per_s"] == pytest.approx(1 / r["latency_s"])
    assert r["file_bytes"] == files["int8"].stat().st_size and r["image_size"] == 128 and r["threads"] == 1
    assert r["peak_rss_mib"] > 50
    with pytest.raises(RuntimeError, match="failed"):
        measure_in_child(str(files["int8"]), threads=1, repeats=1, runtime="eager", prompt_mode="nonsense")


def test_small_benchmark_writes_json_and_markdown_with_ratios_from_measured_latencies(tmp_path: Path) -> None:
    optional_module("onnxruntime", "the onnxruntime routes need it")
    optional_module("transformers", "the reference route runs Hugging Face SamModel")
    routes = ["eager_fp32", "eager_int8", "ort_fp32", "ort_int8", "onnx_fp32", "onnx_int8", "transformers_fp32"]
    out = tmp_path / "bench.json"
    benchmark.run(["small"], out, image_size=128, routes=routes, threads=1, repeats=2, warmup=0, log=lambda _: None,
                  profile=True)
    result = json.loads(out.read_text())
    (arch,) = result["archs"]
    assert list(arch["routes"]) == routes
    for name, r in arch["routes"].items():
        assert "error" not in r, (name, r.get("error"))
        assert r["peak_rss_mib"] > 0 and r["threads"] == 1 and len(r["latency_all_s"]) == 2
        assert r["latency_min_s"] == min(r["latency_all_s"]) <= r["latency_s"] <= r["latency_max_s"] == max(r["latency_all_s"])
    assert arch["routes"]["ort_int8"]["onnx_bytes"] < arch["routes"]["ort_fp32"]["onnx_bytes"]
    assert "export_s" in arch["routes"]["ort_fp32"] and "export_s" in arch["routes"]["onnx_int8"]
    # the torch-free routes really ran without torch, and hold a fraction of a torch process's memory
    assert arch["routes"]["onnx_int8"]["torch_imported"] is False
    assert arch["routes"]["onnx_int8"]["peak_rss_mib"] < arch["routes"]["eager_int8"]["peak_rss_mib"] / 2
    lat = {k: v["latency_s"] for k, v in arch["routes"].items()}
    speedups = {(s["baseline"], s["route"]): s["speedup"] for s in arch["speedups"]}
    assert speedups == pytest.approx({("eager_fp32", "eager_int8"): lat["eager_fp32"] / lat["eager_int8"],
                                      ("ort_fp32", "ort_int8"): lat["ort_fp32"] / lat["ort_int8"],
                                      ("onnx_fp32", "onnx_int8"): lat["onnx_fp32"] / lat["onnx_int8"]})
    versus = {v["route"]: v["speedup"] for v in arch["versus_reference"]}
    assert versus == pytest.approx({k: lat["transformers_fp32"] / v for k, v in lat.items() if k != "transformers_fp32"})
    assert arch["fastest"] == min(lat, key=lat.get)
    # the operator breakdown of the onnxruntime encoder: INT8 kernels only in the INT8 graph, shares sum to one
    groups = {name: {g["group"] for g in arch["routes"][name]["profile"]["groups"]} for name in ("ort_fp32", "ort_int8")}
    assert "INT8 linear layers" in groups["ort_int8"] and "INT8 linear layers" not in groups["ort_fp32"]
    assert sum(g["share"] for g in arch["routes"]["ort_int8"]["profile"]["groups"]) == pytest.approx(1.0)
    md = out.with_suffix(".md").read_text()
    assert "onnxruntime INT8 vs onnxruntime FP32" in md and f"**{arch['fastest']}**" in md
    assert "against transformers_fp32" in md and "ort_int8: image encoder by operator" in md


def test_the_reference_route_is_transformers_sammodel_with_our_architecture() -> None:
    """Same sizes as ours (parameter counts agree but for SamModel's few extra embeddings), and it segments."""
    optional_module("transformers", "the reference route runs Hugging Face SamModel")
    import torch
    from scripts.model.sam import ARCHS
    from scripts.model.segmenter import SamSegmenter

    from adaqat.hf_sam import HfSamSegmenter

    for name in ("small", "vit_b"):
        ours = sum(p.numel() for p in SamSegmenter(name).parameters())
        theirs = sum(p.numel() for p in HfSamSegmenter(ARCHS[name]).parameters())
        assert 0 <= theirs - ours <= 512, (name, ours, theirs)
    reference = HfSamSegmenter(ARCHS["small"])
    with torch.inference_mode():
        logits = reference(torch.rand(1, 1, 300, 200))
    assert logits.shape == (1, 1, 300, 200) and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch_name, size", [("small", 256), ("vit_b", 512)])
def test_encoder_macs_agree_with_torchs_flop_counter(arch_name, size) -> None:
    """The hardware-floor estimate rests on this count: torch's FlopCounterMode over segment-anything's own
    attention (whose matmuls it sees; SDPA's CPU kernel it does not) finds the same work within the small
    relative-position einsums we leave out."""
    import torch
    from segment_anything.modeling.image_encoder import Attention
    from scripts.model.attention import SdpaAttention
    from scripts.model.sam import build_sam
    from torch.utils.flop_counter import FlopCounterMode

    from adaqat.op_profile import encoder_macs, hardware_floor

    sam = build_sam(arch_name, image_size=size)
    for module in sam.image_encoder.modules():
        if type(module) is SdpaAttention:
            module.__class__ = Attention
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        sam.image_encoder(torch.rand(1, 3, size, size))
    counted = counter.get_total_flops() / 2
    ours = sum(encoder_macs(sam.arch, size).values())
    assert ours <= counted <= 1.03 * ours
    floor = hardware_floor(encoder_macs(sam.arch, size), {"linear_mlp"}, ["avx2", "fma"], 2000.0, 2)
    assert floor["floor_all_int8_s"] < floor["floor_int8_s"] < floor["floor_fp32_s"]
    assert floor["floor_fp32_s"] == pytest.approx(ours / (16 * 2e9 * 2))
