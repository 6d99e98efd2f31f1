"""The on-disk INT8 artefact: export a (QAT) model, save/load it safely, rebuild an INT8 model.

Why a custom state layout rather than pickling a quantized model: the file must load with
``torch.load(weights_only=True)`` (no code execution from a downloaded file), stay independent of
kernel-specific packed formats (rebuilt at load time by ``Int8Linear``), and be small: quantized
Linear weights are stored once, as int8, never alongside an FP32 copy.

Layout (``format_version`` 1)::

    {"format": "adaqat-int8", "format_version": 1, "quantized_layers": [names],
     "per_channel": bool, "state_dict": {...}, "meta": {...}}   # "meta" only after save_int8

For each quantized Linear ``<name>``: ``<name>.weight_int8`` (int8 [N, K]), ``<name>.weight_scale``
(float32 [N] per channel or 0-dim per tensor) and ``<name>.bias`` (float32, if any). Every other
entry is the model's own state, floating tensors as float32.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..atomic import atomic_torch_save
from .fake_quant import FakeQuantLinear, quantize_weight_symmetric
from .runtime_eager import Int8Linear

FORMAT = "adaqat-int8"
FORMAT_VERSION = 1
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _standalone(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy owning exactly its bytes: torch.save writes a view's whole storage."""
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _linear_named(model: nn.Module, name: str, role: str) -> nn.Linear:
    """The Linear called ``name`` in ``model``, or a ValueError saying what ``role`` named instead."""
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"{role} {name!r}: no module of that name; it does not exist in the model") from exc
    if not isinstance(module, nn.Linear):
        raise ValueError(f"{role} {name!r} is {type(module).__name__}, not nn.Linear")
    return module


def export_int8_state(model: nn.Module, quantize_names: list[str], per_channel: bool = True) -> dict:
    """Build the INT8 artefact of ``model`` with the Linears in ``quantize_names`` stored as int8.

    A :class:`FakeQuantLinear` is exported with its own training-time rule (bits; granularity must
    equal ``per_channel``), so ``weight_int8 * weight_scale`` equals its fake-quantized weight
    bit for bit. A plain Linear is quantized post-training with the same rule.
    """
    names = list(dict.fromkeys(quantize_names))
    if any(name == "" for name in names):
        raise ValueError("the root module cannot be a quantized layer; name Linear children")
    forgotten = sorted(set(n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)) - set(names))
    if forgotten:
        # Exporting them as float would ship weights the network was never trained with.
        raise ValueError(f"fake-quantized layers missing from quantize_names: {forgotten}")
    float_state = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    quantized_keys: set[str] = set()
    for name in names:
        module = _linear_named(model, name, "quantize_names")
        bits = 8
        if isinstance(module, FakeQuantLinear):
            if module.per_channel != per_channel:
                raise ValueError(f"{name!r} was trained with per_channel={module.per_channel}, "
                                 f"export asked for per_channel={per_channel}")
            bits = module.bits
        q, scale = quantize_weight_symmetric(module.weight, per_channel=per_channel, bits=bits)
        state[f"{name}.weight_int8"] = _standalone(q)
        state[f"{name}.weight_scale"] = _standalone(scale.float())
        quantized_keys.add(f"{name}.weight")
        if module.bias is not None:
            state[f"{name}.bias"] = _standalone(module.bias.float())
            quantized_keys.add(f"{name}.bias")
    for key, value in float_state.items():
        if key in quantized_keys:
            continue
        state[key] = _standalone(value.float() if value.is_floating_point() else value)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "quantized_layers": names,
            "per_channel": bool(per_channel), "state_dict": state}


def _check_plain(value: Any, where: str) -> None:
    """Reject anything torch.load(weights_only=True) could not read back (or should not carry)."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, got {type(key).__name__}")
            _check_plain(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain type (str/int/float/bool/None/list/dict)")


def _validate(artefact: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming ``source`` unless ``artefact`` is a well-formed version-1 artefact."""
    if not isinstance(artefact, Mapping) or artefact.get("format") != FORMAT:
        found = artefact.get("format") if isinstance(artefact, Mapping) else type(artefact).__name__
        raise ValueError(f"{source}: not an {FORMAT} artefact (format={found!r})")
    if artefact.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{source}: unsupported {FORMAT} format_version "
                         f"{artefact.get('format_version')!r} (this code reads {FORMAT_VERSION})")
    state, layers = artefact.get("state_dict"), artefact.get("quantized_layers")
    if not isinstance(state, Mapping) or not isinstance(layers, (list, tuple)):
        raise ValueError(f"{source}: artefact lacks a state_dict mapping or a quantized_layers list")
    for name in layers:
        q, scale = state.get(f"{name}.weight_int8"), state.get(f"{name}.weight_scale")
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            raise ValueError(f"{source}: {name}.weight_int8 missing or not int8")
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
            raise ValueError(f"{source}: {name}.weight_scale missing or not float32")


def save_int8(artefact: dict, path: str | os.PathLike, extra_meta: dict | None = None) -> Path:
    """Atomically write ``artefact`` with ``extra_meta`` (plain types only) under key "meta"."""
    _validate(artefact, "save_int8")
    meta = dict(artefact.get("meta") or {})
    meta.update(extra_meta or {})
    _check_plain(meta, "extra_meta")
    _check_plain({k: v for k, v in artefact.items() if k not in ("state_dict", "meta")}, "artefact")
    return atomic_torch_save({**artefact, "meta": meta}, path)


def load_int8_artefact(path: str | os.PathLike) -> dict:
    """Load an artefact with ``weights_only=True``; anything else is refused with a ValueError."""
    try:
        artefact = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        # weights_only refuses globals it does not allow (e.g. a __reduce__ payload) before running them.
        raise ValueError(f"{os.fspath(path)}: not a loadable {FORMAT} artefact: {exc}") from exc
    _validate(artefact, os.fspath(path))
    return artefact


def apply_int8_state(model_skeleton: nn.Module, artefact: Mapping[str, Any], backend: str = "auto") -> nn.Module:
    """Swap the artefact's quantized Linears for :class:`Int8Linear` and load every tensor (strict).

    ``model_skeleton`` is a freshly built float model of the same architecture (modified in place
    and returned). Missing or unexpected keys raise ValueError naming them.
    """
    _validate(artefact, "apply_int8_state")
    state = artefact["state_dict"]
    for name in artefact["quantized_layers"]:
        module = _linear_named(model_skeleton, name, "artefact layer")
        q = state[f"{name}.weight_int8"]
        if tuple(q.shape) != (module.out_features, module.in_features):
            raise ValueError(f"{name}: int8 weight {tuple(q.shape)} does not fit "
                             f"Linear({module.in_features}, {module.out_features})")
        int8 = Int8Linear(q, state[f"{name}.weight_scale"], state.get(f"{name}.bias"), backend=backend)
        parent_name, _, child = name.rpartition(".")
        setattr(model_skeleton.get_submodule(parent_name), child, int8)
    expected = set(model_skeleton.state_dict().keys())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"INT8 artefact does not match the model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    model_skeleton.load_state_dict(state, strict=True)
    return model_skeleton
