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
from .sam import CheckpointError, check_state_dict, read_state_dict
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
    arch: str | Mapping[str, Any] = "small",
    image_size: int | None = None,
    sam_checkpoint: str | os.PathLike | None = None,
    train_encoder: bool = False,
    adapter: Mapping[str, Any] | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    qat: Mapping[str, Any] | None = None,
    prompt_mode: str = "two_pass",
    refine_margin: float = 10.0,
) -> SamSegmenter:
    """Build the network of one training stage.

    Args:
        sam_checkpoint: SAM weights to start from (official ``.pth`` or a bundle ``model.pt``),
            loaded before any adapter is added; ``None`` starts from random weights (stage 0 here).
        train_encoder: train the whole image encoder (stage 0 / full fine-tuning); otherwise it is
            frozen and only adapters, prompt encoder and mask decoder learn.
        adapter: ``{"kind": "adalora", ...add_adalora kwargs}`` or ``{"kind": "lora", ...}``.
        init_checkpoint: a checkpoint of this same layout (e.g. stage 1's best, adapters included),
            loaded after the adapters are in place.
        qat: ``{"keep_float": [patterns], "per_channel": bool}``: stage 2's weight fake-quant.
    """
    network = SamSegmenter(arch, image_size=image_size, checkpoint=sam_checkpoint, prompt_mode=prompt_mode, refine_margin=refine_margin)
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
        keep_float = list(qat.get("keep_float", PAPER_KEEP_FLOAT))
        freeze_rank_masks(network)
        _merge_adapters_to_quantize(network, keep_float)
        network.quantized_layers = apply_fake_quant(  # type: ignore[attr-defined]
            network, keep_float=keep_float, per_channel=bool(qat.get("per_channel", True))
        )
        network.qat_config = {"keep_float": keep_float, "per_channel": bool(qat.get("per_channel", True))}  # type: ignore[attr-defined]
    return network


__all__ = ["PAPER_KEEP_FLOAT", "CheckpointError", "build_network", "load_network_checkpoint"]
