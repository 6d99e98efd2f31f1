"""The INT8 artefact on disk: int8 weights + float32 scales for quantized Linears, float for the rest.

Plain tensors and Python values only, so ``torch.load(weights_only=True)`` reads it and nothing in it
can run code. Packed kernel weights are never saved: ``Int8Linear`` rebuilds them from these tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .atomic import atomic_torch_save
from .int8_runtime import Int8Linear
from .quantizer import FakeQuantLinear, quantize_weight_symmetric

FORMAT = "adaqat-int8"
FORMAT_VERSION = 1


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: ``torch.save`` of a view writes its whole storage (the FP32 original too)."""
    return tensor.detach().clone().contiguous()


def export_int8_state(model: nn.Module, quantize_names: Sequence[str], per_channel: bool = True) -> dict[str, Any]:
    """The artefact dict of ``model`` with the Linears named in ``quantize_names`` stored as int8.

    A ``FakeQuantLinear`` is exported with its own bits and granularity, so the INT8 model computes
    with exactly the weights QAT trained against.
    """
    modules = dict(model.named_modules())
    missing = [n for n in quantize_names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"not Linear layers of the model, cannot quantize: {missing[:10]}")
    state = {k: _owned(v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    for name in quantize_names:
        layer = modules[name]
        bits, channelwise = 8, per_channel
        if isinstance(layer, FakeQuantLinear):
            bits, channelwise = layer.bits, layer.per_channel
        q, scale = quantize_weight_symmetric(layer.weight.detach().float(), per_channel=channelwise, bits=bits)
        del state[f"{name}.weight"]
        state[f"{name}.weight_int8"] = _owned(q)
        state[f"{name}.weight_scale"] = _owned(scale.float())
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "quantized_layers": list(quantize_names),
            "per_channel": bool(per_channel), "state_dict": state}


def save_int8(artefact: Mapping[str, Any], path: str | os.PathLike, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write the artefact atomically; ``extra_meta`` (plain values: arch, prompt settings) goes under ``meta``."""
    payload = dict(artefact)
    payload["meta"] = {**dict(payload.get("meta", {})), **dict(extra_meta or {})}
    return atomic_torch_save(payload, path)


def load_int8_artefact(path: str | os.PathLike) -> dict[str, Any]:
    """Read an artefact with ``weights_only=True``; anything else is refused with the file named."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable INT8 model (loaded with weights_only=True): {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} model file")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: {FORMAT} version {obj.get('format_version')} is newer than this reader ({FORMAT_VERSION})")
    return obj


def apply_int8_state(model: nn.Module, artefact: Mapping[str, Any]) -> nn.Module:
    """Swap each quantized Linear of a float skeleton for an ``Int8Linear`` and load the rest strictly."""
    state = dict(artefact["state_dict"])
    for name in artefact["quantized_layers"]:
        try:
            layer = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"INT8 model names a layer the network does not have: {name}") from exc
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"INT8 model quantizes {name}, which is not a Linear layer here")
        try:
            q, scale = state.pop(f"{name}.weight_int8"), state.pop(f"{name}.weight_scale")
        except KeyError as exc:
            raise ValueError(f"INT8 model lacks the int8 weight or scale of {name}") from exc
        bias = state.pop(f"{name}.bias", None)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, Int8Linear(q, scale, bias))
    quantized_keys = {f"{n}.{b}" for n in artefact["quantized_layers"] for b in ("weight_int8", "weight_scale", "bias")}
    expected = {k for k in model.state_dict() if k not in quantized_keys}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"INT8 model does not match the network: missing {missing[:10]}, unexpected {unexpected[:10]}")
    model.load_state_dict(state, strict=False)
    return model


__all__ = ["FORMAT", "apply_int8_state", "export_int8_state", "load_int8_artefact", "save_int8"]
