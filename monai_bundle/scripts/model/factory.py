"""One builder for every stage's network, so the configs only differ in the arguments they pass.

Stage 0 trains SAM fully, stage 1 adds adapters to a frozen encoder, stage 2 loads the stage-1
checkpoint and wraps the selected Linear layers in weight fake-quantization. The order of those
steps matters (checkpoints hold the adapter layout), which is why it lives here and not in JSON.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Mapping, Sequence

import torch.nn as nn
from peft.tuners.tuners_utils import BaseTunerLayer

from ..quantization.fake_quant import apply_fake_quant
from .adapters import add_adalora, add_lora, freeze_rank_masks
from .sam import CheckpointError, SamArch, arch_for, check_state_dict, read_state_dict
from .segmenter import SamSegmenter

# The paper's selective precision: the encoder's qkv (with its adapters) stays in float.
PAPER_KEEP_FLOAT = ("*image_encoder.blocks.*.attn.qkv*", "*lora_*")


def load_network_checkpoint(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a bundle checkpoint (network state, possibly with adapters) strictly, naming bad keys."""
    state = read_state_dict(path)
    if not any(k.startswith("sam.") for k in state):
        state = {f"sam.{k}": v for k, v in state.items()}
    check_state_dict(network, state, os.fspath(path))
    network.load_state_dict(state, strict=True)
    return network


def _merge_adapters_to_quantize(network: nn.Module, keep_float: Sequence[str]) -> list[str]:
    """Fold adapters into base layers that stage 2 will quantize, so QAT sees the weight it exports."""
    merged = []
    for name, module in list(network.named_modules()):
        if isinstance(module, BaseTunerLayer):
            base_name = f"{name}.base_layer"
            if not any(fnmatch.fnmatch(base_name, pattern) for pattern in keep_float):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(network.get_submodule(parent_name), child, module.get_base_layer())
                merged.append(name)
    return merged


def build_network(
    arch: str | SamArch | Mapping[str, Any] | None = "auto",
    image_size: int | None = None,
    sam_checkpoint: str | os.PathLike | None = None,
    train_encoder: bool = False,
    adapter: Mapping[str, Any] | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    qat: Mapping[str, Any] | None = None,
    prompt_mode: str = "two_pass",
    refine_margin: float = 10.0,
    allow_random_encoder: bool = False,
) -> SamSegmenter:
    """Build the network of one training stage.

    Args:
        arch, image_size: the SAM to build (``sam.arch_for``): "auto" reads it from ``sam_checkpoint`` (else
            ``init_checkpoint``, else the CPU-sized ``small``), and ``image_size`` None is its native size
            (1024 for ViT-B/L/H, the paper's setting).
        sam_checkpoint: SAM weights to start from (official ``.pth`` or a bundle ``model.pt``),
            loaded before any adapter is added; ``None`` starts from random weights (stage 0 here).
        train_encoder: train the whole image encoder (stage 0 / full fine-tuning); otherwise it is
            frozen and only adapters, prompt encoder and mask decoder learn.
        adapter: ``{"kind": "adalora", ...add_adalora kwargs}`` or ``{"kind": "lora", ...}``.
        init_checkpoint: a checkpoint of this same layout (e.g. stage 1's best, adapters included),
            loaded after the adapters are in place.
        qat: ``{"keep_float": [patterns], "per_channel": bool, "activations": "dynamic_per_tensor" | None}``:
            stage 2's fake-quant (weights, and the inputs as the INT8 runtimes quantize them).
        allow_random_encoder: adapters on a frozen, randomly initialised encoder learn nothing useful, so
            they are refused unless a test asks for exactly that.
    """
    if adapter and not train_encoder and not (sam_checkpoint or init_checkpoint) and not allow_random_encoder:
        raise ValueError("adapter training needs a pretrained SAM encoder to adapt: pass one with --checkpoint "
                         "(e.g. sam_vit_b_01ec64.pth, or the foundation a stage-0 run exported; sam_checkpoint in "
                         "the config), or train the whole SAM first (stage 0, adaqat train --full)")
    spec = arch_for(arch, image_size, sam_checkpoint or init_checkpoint)
    network = SamSegmenter(spec, checkpoint=sam_checkpoint, prompt_mode=prompt_mode, refine_margin=refine_margin)
    network.sam.image_encoder.requires_grad_(bool(train_encoder))
    if adapter:
        options = dict(adapter)
        kind = options.pop("kind", "adalora")
        encoder = network.sam.image_encoder
        if kind == "adalora":
            # Not a submodule: the tuner wraps the encoder that ``network`` already owns.
            object.__setattr__(network, "adalora_tuner", add_adalora(encoder, **options))
        elif kind == "lora":
            add_lora(encoder, **options)
        else:
            raise ValueError(f"unknown adapter kind {kind!r}; use 'adalora' or 'lora'")
    if init_checkpoint:
        load_network_checkpoint(network, init_checkpoint)
    if qat:
        config = {"keep_float": list(qat.get("keep_float", PAPER_KEEP_FLOAT)),
                  "per_channel": bool(qat.get("per_channel", True)), "activations": qat.get("activations", "dynamic_per_tensor")}
        freeze_rank_masks(network)
        _merge_adapters_to_quantize(network, config["keep_float"])
        network.quantized_layers = apply_fake_quant(network, **config)  # type: ignore[attr-defined]
        network.qat_config = config  # type: ignore[attr-defined]
    return network


__all__ = ["PAPER_KEEP_FLOAT", "CheckpointError", "build_network", "load_network_checkpoint"]
