"""The one loader: any model file a user brings becomes the inference network, chosen by the file's header.

``adaqat-int8`` -> SamSegmenter with Int8Linear layers; ``adaqat-sam-fp32`` or a SAM state dict (official
checkpoint, earlier FP32 export) -> SamSegmenter of the recorded or inferred architecture; ``adaqat-unet``
-> the UNet baseline. The image encoder of a SAM then runs in the fastest measured runtime (``runtime``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..model.sam import PATCH_SIZE, CheckpointError, SamArch, infer_arch
from ..model.segmenter import SamSegmenter
from ..model.unet import ResizingUNet
from ..quantization import runtime_onnx
from ..quantization.int8_artefact import apply_int8_state, load_int8_artefact
from .header import SAM_FP32, SAM_INT8, UNET, read_model_file

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "ort", "eager")
# "auto" sends an encoder to onnxruntime only above this much work (tokens x width x depth). Measured with
# `adaqat benchmark` (docs/results.md, 2 threads): the small CPU SAM at 256 px (0.26 M) runs faster in eager
# PyTorch (22 ms vs 32 ms), ViT-B at 1024 px (37.7 M) 2.2x faster in onnxruntime (4.3 s vs 9.3 s, INT8).
# The crossover lies between the two; the threshold is set in between, not measured more finely.
ORT_MIN_ENCODER_WORK = 4_000_000


def encoder_work(arch: SamArch) -> int:
    """Tokens x embedding width x depth of a SAM image encoder: what decides which route is faster."""
    patches = (arch.image_size // PATCH_SIZE) ** 2
    return patches * arch.embed_dim * arch.depth


def resolve_runtime(runtime: str | None, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``ort`` on CPU when onnxruntime is installed, else ``eager`` (one log line saying why)."""
    runtime = runtime or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime != "auto":
        return runtime
    if torch.device(device).type != "cpu":
        return "eager"
    if not runtime_onnx.available():
        logger.warning("onnxruntime/onnx/onnxscript not installed: running the model in eager PyTorch (slower); "
                       "pip install the versions in setup.py for the faster route")
        return "eager"
    return "ort"


def use_ort_encoder(network: SamSegmenter, model_path: str | os.PathLike, threads: int | None = None) -> SamSegmenter:
    """Replace ``network.sam.image_encoder`` by an onnxruntime encoder built (or cached) from ``model_path``."""
    session, path = runtime_onnx.encoder_session(network.sam.image_encoder, model_path, network.image_size, threads)
    network.sam.image_encoder = runtime_onnx.OrtImageEncoder(session, path)
    return network


def load_model(path: str | os.PathLike, arch: str | dict | None = None, image_size: int | None = None,
               prompt_mode: str | None = None, device: str | torch.device = "cpu", runtime: str | None = "auto") -> nn.Module:
    """Build the inference network a model file describes (see the module docstring).

    ``arch`` / ``image_size`` override what a SAM state dict's shapes say. A training checkpoint with adapters
    is refused with a hint, since adapters are merged by export. The UNet ignores ``prompt_mode`` and ``runtime``.

    ``runtime``: ``"auto"`` (default) runs the image encoder with onnxruntime on CPU when it is installed and
    the encoder is large enough for that to be faster (ViT-B/L/H; the small CPU SAM stays eager, as measured,
    see ``ORT_MIN_ENCODER_WORK``), else eager; ``"ort"`` requires it; ``"eager"`` keeps everything in PyTorch
    (needed for training, autograd or a GPU).
    """
    kind, content = read_model_file(path)
    if kind == UNET:
        return _load_unet(content, path, device)
    chosen = resolve_runtime(runtime, device)
    network = _load_sam(path, kind, content, arch, image_size, prompt_mode, device)
    if chosen == "eager":
        return network
    if runtime in (None, "auto") and encoder_work(network.arch) < ORT_MIN_ENCODER_WORK:
        return network  # small encoders run faster in eager PyTorch (measured; see ORT_MIN_ENCODER_WORK)
    try:
        return use_ort_encoder(network, path)
    except Exception as exc:
        if runtime == "ort":
            raise
        # "auto" must still give a working model: one line saying why it is the slower one.
        logger.warning("%s: onnxruntime encoder unavailable (%s: %s); running eager PyTorch", path, type(exc).__name__, exc)
        return network  # use_ort_encoder swaps the encoder only once its session exists


def _load_unet(content: dict[str, Any], path: str | os.PathLike, device: str | torch.device) -> ResizingUNet:
    try:
        network = ResizingUNet(**content["config"])
        network.load_state_dict(content["state"], strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: not a valid {UNET} file ({exc})") from exc
    return network.to(device).eval()


def _load_sam(path: str | os.PathLike, kind: str, content: dict[str, Any], arch: str | dict | None,
              image_size: int | None, prompt_mode: str | None, device: str | torch.device) -> SamSegmenter:
    path = os.fspath(path)
    if kind == SAM_INT8:
        artefact = load_int8_artefact(path)
        meta = artefact.get("meta", {})
        network = SamSegmenter(meta["arch"], prompt_mode=prompt_mode or meta.get("prompt_mode", "two_pass"),
                               refine_margin=meta.get("refine_margin", 10.0))
        apply_int8_state(network, artefact)
        return network.to(device).eval()
    meta = content.get("meta", {}) if kind == SAM_FP32 else {}
    state = content["model"] if kind == SAM_FP32 else content
    state = {k.removeprefix("sam."): v for k, v in state.items()}
    if any(".lora_" in k or ".base_layer." in k for k in state):
        raise CheckpointError(f"{path}: holds un-merged adapters (a training checkpoint); export it first "
                              "(`adaqat export`) or pass the exported model file")
    if arch not in (None, "auto"):
        spec: Any = arch
    elif kind == SAM_FP32:
        spec = SamArch.from_dict(content["arch"])
    else:
        spec = infer_arch(state)
    network = SamSegmenter(spec, image_size=image_size, prompt_mode=prompt_mode or meta.get("prompt_mode", "two_pass"),
                           refine_margin=meta.get("refine_margin", 10.0), checkpoint=path)
    return network.to(device).eval()


def default_model_path(bundle_root: str | os.PathLike) -> str:
    """The bundle's shipped model: the INT8 artefact when present (the faster route), else FP32."""
    models = Path(bundle_root) / "models"
    int8 = models / "model_int8.pt"
    return str(int8 if int8.is_file() else models / "model.pt")


__all__ = ["ORT_MIN_ENCODER_WORK", "RUNTIMES", "default_model_path", "encoder_work", "load_model", "resolve_runtime",
           "use_ort_encoder"]
