"""Shipping formats: the FP32 model (adapters merged) and the real INT8 artefact, and loading either.

Both files hold tensors and plain Python values only, so they load with ``weights_only=True``; the
INT8 file records the architecture, so a user's ``--model`` file is self-describing.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapters import merge_adapters
from .atomic import atomic_torch_save
from .distributed import is_main_process, unwrap
from .int8_export import apply_int8_state, export_int8_state, load_int8_artefact, save_int8
from .model_factory import load_network_checkpoint
from .network import SamSegmenter
from .ort_runtime import ORT_MIN_ENCODER_WORK, encoder_work, resolve_runtime, use_ort_encoder
from .quantizer import remove_fake_quant
from .sam_model import CheckpointError, infer_arch, read_state_dict
from .unet_baseline import is_unet_file, load_unet

INT8_FORMAT = "adaqat-int8"
logger = logging.getLogger(__name__)


def _with_best_weights(network: nn.Module, best_checkpoint: str | os.PathLike | None) -> nn.Module:
    """A deep copy of ``network`` holding the best checkpoint's weights (the run ends on its last epoch)."""
    shipped = copy.deepcopy(network).cpu().eval()
    if best_checkpoint and Path(best_checkpoint).is_file():
        load_network_checkpoint(shipped, best_checkpoint)
    return shipped


def export_fp32(network: nn.Module, best_checkpoint: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    """Write the best weights, adapters merged and fake-quant removed, as a plain SAM network state.

    ``network`` may be wrapped in DDP; in a distributed run only rank 0 writes.
    """
    network = unwrap(network)
    if not is_main_process():
        return Path(path)
    shipped = _with_best_weights(network, best_checkpoint)
    merge_adapters(shipped.sam.image_encoder)
    remove_fake_quant(shipped)
    state = {k: v.detach().clone().contiguous() for k, v in shipped.state_dict().items()}
    return atomic_torch_save(state, path)


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
    meta = {"arch": shipped.arch.to_dict(), "prompt_mode": shipped.prompt_mode, "refine_margin": shipped.refine_margin}
    return save_int8(artefact, path, extra_meta=meta)


def is_unet_baseline(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the study's prompt-free UNet baseline (``unet_baseline.export_unet``)."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return is_unet_file(obj)


def is_int8_artefact(path: str | os.PathLike) -> bool:
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("format") == INT8_FORMAT


def load_model(path: str | os.PathLike, arch: str | dict | None = None, image_size: int | None = None,
               prompt_mode: str | None = None, device: str | torch.device = "cpu", runtime: str | None = "auto") -> SamSegmenter:
    """Build the inference network from any model file users bring, chosen by its content.

    INT8 artefact -> SamSegmenter with Int8Linear layers (its recorded arch); FP32 bundle ``model.pt`` or an
    official SAM ``.pth`` -> SamSegmenter with the shapes read from the file (``arch`` only overrides).
    A training checkpoint with adapters is refused with a hint, since adapters are merged by export.
    The comparison study's UNet baseline file -> that UNet (prompt-free; ``prompt_mode`` and ``runtime`` are ignored).

    ``runtime``: ``"auto"`` (default) runs the image encoder with onnxruntime on CPU when it is installed and
    the encoder is large enough for that to be faster (ViT-B/L/H; the small CPU SAM stays eager, as measured,
    see ``scripts.ort_runtime.ORT_MIN_ENCODER_WORK``), else eager; ``"ort"`` requires it;
    ``"eager"`` keeps everything in PyTorch (needed for training, autograd or a GPU).
    """
    if is_unet_baseline(path):
        return load_unet(torch.load(os.fspath(path), map_location="cpu", weights_only=True), os.fspath(path), device)
    chosen = resolve_runtime(runtime, device)
    network = _load_eager(path, arch, image_size, prompt_mode, device)
    if chosen == "eager":
        return network
    if runtime in (None, "auto") and encoder_work(network.arch) < ORT_MIN_ENCODER_WORK:
        return network  # small encoders run faster in eager PyTorch (measured; see ort_runtime.ORT_MIN_ENCODER_WORK)
    try:
        return use_ort_encoder(network, path)
    except Exception as exc:
        if runtime == "ort":
            raise
        # "auto" must still give a working model: one line saying why it is the slower one.
        logger.warning("%s: onnxruntime encoder unavailable (%s: %s); running eager PyTorch", path, type(exc).__name__, exc)
        return network  # use_ort_encoder swaps the encoder only once its session exists


def _load_eager(path: str | os.PathLike, arch: str | dict | None, image_size: int | None, prompt_mode: str | None,
                device: str | torch.device) -> SamSegmenter:
    path = os.fspath(path)
    if is_int8_artefact(path):
        artefact = load_int8_artefact(path)
        meta = artefact.get("meta", {})
        network = SamSegmenter(meta["arch"], prompt_mode=prompt_mode or meta.get("prompt_mode", "two_pass"),
                               refine_margin=meta.get("refine_margin", 10.0))
        apply_int8_state(network, artefact)
        return network.to(device).eval()
    state = {k.removeprefix("sam."): v for k, v in read_state_dict(path).items()}
    if any(".lora_" in k or ".base_layer." in k for k in state):
        raise CheckpointError(f"{path}: holds un-merged adapters (a training checkpoint); export it first "
                              "(`adaqat export`) or pass the exported models/model.pt")
    spec: Any = arch if arch not in (None, "auto") else infer_arch(state)
    network = SamSegmenter(spec, image_size=image_size, prompt_mode=prompt_mode or "two_pass", checkpoint=path)
    return network.to(device).eval()


def file_size(path: str | os.PathLike) -> int:
    return Path(path).stat().st_size


__all__ = ["INT8_FORMAT", "export_fp32", "export_int8", "file_size", "is_int8_artefact", "is_unet_baseline", "load_model"]


def default_model_path(bundle_root: str | os.PathLike) -> str:
    """The bundle's shipped model: the INT8 artefact when present (the faster route), else FP32."""
    models = Path(bundle_root) / "models"
    int8 = models / "model_int8.pt"
    return str(int8 if int8.is_file() else models / "model.pt")
