"""Parameter counts and measured file sizes: the numbers behind "16.6x fewer" and "2.24x smaller".

Sizes are measured by writing the real FP32 and INT8 files to a temporary folder; the paper's own
arithmetic is reported beside them (``paper_formula_ratio``) so both bases are visible.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from scripts.model.adapters import adapter_layers, add_adalora, add_lora
from scripts.model.factory import PAPER_KEEP_FLOAT
from scripts.model.sam import count_parameters
from scripts.model.segmenter import SamSegmenter
from scripts.model_files.export import export_fp32, export_ptq_int8

from adaqat.bundle_runner import CONFIG_DIR


def adapter_options(config_name: str) -> dict[str, Any]:
    """The ``adapter`` block of a bundle config, as the defaults of record (references dropped)."""
    block = json.loads((CONFIG_DIR / config_name).read_text())["adapter"]
    return {k: v for k, v in block.items() if not (isinstance(v, str) and v.startswith(("@", "$")))}


def matching_lora(adalora: dict[str, Any]) -> dict[str, Any]:
    """The fixed-rank LoRA compared with an AdaLoRA setting: same targets and alpha, rank = AdaLoRA's target rank
    (the rank AdaLoRA ends with on average), so both adapt the same layers with the same final budget."""
    return {"kind": "lora", "targets": list(adalora["targets"]), "rank": int(adalora["target_r"]),
            "lora_alpha": adalora.get("lora_alpha", 32)}


def _trainable_with(network: SamSegmenter, adapter: dict[str, Any]) -> int:
    """Trainable parameters when ``adapter`` is added to a frozen encoder (decoder + prompt encoder train)."""
    candidate = copy.deepcopy(network)
    candidate.sam.image_encoder.requires_grad_(False)
    options = dict(adapter)
    kind = options.pop("kind")
    if kind == "adalora":
        options.pop("orth_reg_weight", None)
        add_adalora(candidate.sam.image_encoder, total_step=100, **options)
    else:
        add_lora(candidate.sam.image_encoder, **options)
    return count_parameters(candidate, trainable_only=True)


def _linear_params(module: nn.Module, name_filter: str | None = None) -> int:
    return sum(
        sum(p.numel() for p in m.parameters(recurse=False))
        for n, m in module.named_modules()
        if type(m) is nn.Linear and (name_filter is None or name_filter in n)
    )


def paper_formula_ratio(network: SamSegmenter, paper_adapter: dict[str, Any]) -> dict[str, float]:
    """The paper's compression arithmetic: (Linear + adapter) x 4 B over (float part x 4 B + INT8 part x 1 B).

    Float part = encoder ``qkv`` Linears + adapters (the paper's float list); INT8 part = every other Linear.
    Embeddings, convolutions and norms are outside this formula (they are in the measured files).
    """
    linear = _linear_params(network.sam)
    qkv = _linear_params(network.sam.image_encoder, ".attn.qkv")
    candidate = copy.deepcopy(network.sam.image_encoder)
    options = {k: v for k, v in paper_adapter.items() if k not in ("kind", "orth_reg_weight")}
    add_adalora(candidate, total_step=100, **options)
    adapters = sum(p.numel() for layer in adapter_layers(candidate) for n, p in layer.named_parameters() if ".lora_" in f".{n}")
    fp32_params = qkv + adapters
    int8_params = linear - qkv
    return {
        "ratio": (linear + adapters) * 4 / (fp32_params * 4 + int8_params * 1),
        "linear_and_adapter_params": linear + adapters,
        "fp32_params": fp32_params,
        "int8_params": int8_params,
    }


def measured_file_bytes(network: SamSegmenter, folder: Path) -> dict[str, int]:
    """Write FP32, INT8 (paper float list) and INT8 (all Linear) files and return their sizes."""
    sizes = {"fp32": export_fp32(network, None, folder / "model_fp32.pt").stat().st_size}
    for key, keep_float in (("int8_paper", list(PAPER_KEEP_FLOAT)), ("int8_all_linear", [])):
        sizes[key] = export_ptq_int8(network, folder / f"model_{key}.pt", keep_float).stat().st_size
    return sizes


def model_stats(arch: str = "vit_b", image_size: int | None = None, work_dir: str | None = None) -> dict[str, Any]:
    """Everything ``adaqat stats`` prints; see the module docstring for what is measured vs computed."""
    torch.manual_seed(0)
    network = SamSegmenter(arch, image_size=image_size).eval()
    sam = network.sam
    parts = {name: count_parameters(getattr(sam, name)) for name in ("image_encoder", "prompt_encoder", "mask_decoder")}
    total = count_parameters(sam)
    adalora_default = adapter_options("train.json")
    paper_adapter = adapter_options("paper.json")
    lora_default = matching_lora(adalora_default)
    trainable = {
        "decoder": parts["prompt_encoder"] + parts["mask_decoder"],
        "lora": _trainable_with(network, lora_default),
        "adalora": _trainable_with(network, adalora_default),
        "adalora_paper": _trainable_with(network, paper_adapter),
        "full": total,
    }
    formula = paper_formula_ratio(network, paper_adapter)
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        sizes = measured_file_bytes(network, Path(folder))
    return {
        "arch": arch,
        "image_size": network.image_size,
        "total_params": total,
        "parts": parts,
        "trainable": trainable,
        "reduction_vs_full": {k: total / v for k, v in trainable.items() if v},
        "reduction_paper_basis": {k: parts["image_encoder"] / v for k, v in trainable.items() if v},
        "file_bytes": sizes,
        "file_ratio": {k: sizes["fp32"] / v for k, v in sizes.items() if k != "fp32"},
        "paper_formula_ratio": formula["ratio"],
        "paper_formula": formula,
        "basis": {
            "reduction_vs_full": "whole model: all SAM parameters / trainable parameters",
            "reduction_paper_basis": "the paper's basis (its 16.6x = 89.7M / 5.4M): image-encoder parameters / trainable parameters",
            "trainable.decoder": "mask decoder + prompt encoder (both trained in every SAM method here)",
            "trainable.lora": f"fixed-rank LoRA r={lora_default['rank']} on {lora_default['targets']} + decoder + prompt encoder",
            "trainable.adalora": "default AdaLoRA preset (train.json) at its initial rank, all allocated slots counted, + decoder + prompt encoder",
            "trainable.adalora_paper": "paper preset (paper.json): q/k/v adapters at initial rank 48 + decoder + prompt encoder",
            "file_bytes": "torch.save files written and measured; INT8 = int8 weights + per-channel fp32 scales",
            "paper_formula_ratio": "paper arithmetic over Linear + adapter parameters only (paper preset adapters)",
        },
    }


__all__ = ["adapter_options", "matching_lora", "measured_file_bytes", "model_stats", "paper_formula_ratio"]
