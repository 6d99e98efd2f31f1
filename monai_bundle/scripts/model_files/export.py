"""Writing model files: the FP32 segmenter (adapters merged), the real INT8 artefact and the UNet baseline.

Each file carries its header (``scripts.model_files.header``) and holds tensors and plain Python values
only, so it loads with ``weights_only=True``. The train configs call these at the end of a run (rank 0
only under ``torchrun``), with the run's best checkpoint.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..atomic import atomic_torch_save
from ..model.adapters import merge_adapters
from ..model.factory import load_network_checkpoint
from ..quantization.fake_quant import apply_fake_quant, remove_fake_quant
from ..quantization.int8_artefact import export_int8_state, save_int8
from ..training.distributed import is_main_process, unwrap
from .header import SAM_FP32, SAM_FP32_VERSION, UNET


def _with_best_weights(network: nn.Module, best_checkpoint: str | os.PathLike | None) -> nn.Module:
    """A deep copy of ``network`` holding the best checkpoint's weights (the run ends on its last epoch)."""
    shipped = copy.deepcopy(network).cpu().eval()
    if best_checkpoint and Path(best_checkpoint).is_file():
        load_network_checkpoint(shipped, best_checkpoint)
    return shipped


def _segmenter_meta(network: nn.Module) -> dict:
    return {"prompt_mode": network.prompt_mode, "refine_margin": network.refine_margin}


def export_fp32(network: nn.Module, best_checkpoint: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    """Write the best weights, adapters merged and fake-quant removed, as an ``adaqat-sam-fp32`` file (rank 0 only)."""
    network = unwrap(network)
    if not is_main_process():
        return Path(path)
    shipped = _with_best_weights(network, best_checkpoint)
    merge_adapters(shipped.sam.image_encoder)
    remove_fake_quant(shipped)
    state = {k: v.detach().clone().contiguous() for k, v in shipped.state_dict().items()}
    return atomic_torch_save({"format": SAM_FP32, "format_version": SAM_FP32_VERSION, "arch": shipped.arch.to_dict(),
                              "model": state, "meta": _segmenter_meta(shipped)}, path)


def export_int8(network: nn.Module, best_checkpoint: str | os.PathLike | None, path: str | os.PathLike,
                per_channel: bool | None = None) -> Path:
    """Write the real INT8 artefact of a stage-2 network: its fake-quantized Linears as int8 + scales (rank 0 only)."""
    network = unwrap(network)
    if not is_main_process():
        return Path(path)
    shipped = _with_best_weights(network, best_checkpoint)
    names = list(getattr(network, "quantized_layers", []))
    if not names:
        raise ValueError("export_int8 needs a stage-2 network (built with qat=...): no fake-quantized layers found")
    merge_adapters(shipped.sam.image_encoder)
    if per_channel is None:
        per_channel = bool(getattr(network, "qat_config", {}).get("per_channel", True))
    artefact = export_int8_state(shipped, names, per_channel=per_channel)
    # what stage 2 simulated (float-kept layers, weight granularity, activation rounding): what the runtimes run
    qat = dict(getattr(network, "qat_config", {}) or {"per_channel": per_channel})
    return save_int8(artefact, path, extra_meta={"arch": shipped.arch.to_dict(), "qat": qat, **_segmenter_meta(shipped)})


def export_ptq_int8(network: nn.Module, path: str | os.PathLike, keep_float: Sequence[str],
                    per_channel: bool = True) -> Path:
    """Quantize a float segmenter post-training (no QAT) and write its INT8 artefact; ``keep_float`` stays float.

    The same rounding rule and file as stage 2's export (``export_int8``), so PTQ and QAT files compare like
    with like. ``network`` itself is left untouched.
    """
    candidate = copy.deepcopy(unwrap(network))
    candidate.quantized_layers = apply_fake_quant(candidate, keep_float=list(keep_float), per_channel=per_channel)
    return export_int8(candidate, None, path, per_channel=per_channel)


def export_unet(network: nn.Module, best_checkpoint: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    """Write the best weights (``best_checkpoint``'s ``model`` entry, else the current ones) as an ``adaqat-unet`` file."""
    network = unwrap(network)
    if not is_main_process():
        return Path(path)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    if best_checkpoint and Path(best_checkpoint).is_file():
        saved = torch.load(os.fspath(best_checkpoint), map_location="cpu", weights_only=True)
        state = saved.get("model", saved)
    return atomic_torch_save({"format": UNET, "config": dict(network.config), "state": state}, path)


__all__ = ["export_fp32", "export_int8", "export_ptq_int8", "export_unet"]
