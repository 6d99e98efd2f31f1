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

import numpy as np
import torch
import torch.nn as nn

from ..deploy import imaging
from ..deploy.predictor import OnnxSegmenter
from ..model.sam import PATCH_SIZE, CheckpointError, SamArch, infer_arch
from ..model.segmenter import SamSegmenter
from ..model.unet import ResizingUNet
from ..quantization import runtime_onnx
from ..quantization.int8_artefact import apply_int8_state, load_int8_artefact
from .header import SAM_FP32, SAM_INT8, UNET, read_model_file

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "ort", "onnx", "eager")
# "auto" sends a model to onnxruntime only above this much encoder work (tokens x width x depth). Measured with
# `adaqat benchmark` (docs/results/benchmark.md, 2 threads): the shipped small SAM at 256 px (0.26 M) runs fastest
# in eager PyTorch (24 ms FP32, 32 ms INT8, against 52-83 ms in onnxruntime); ViT-B at 1024 px (37.7 M) fastest as
# the whole segmenter in onnxruntime (INT8 7.9 s, 1.6 GB, against 9.2 s, 2.6 GB with only the encoder there and
# 14.1 s eager). The crossover lies between the two; the threshold is set in between, not measured more finely.
ORT_MIN_ENCODER_WORK = 4_000_000


def encoder_work(arch: SamArch) -> int:
    """Tokens x embedding width x depth of a SAM image encoder: what decides which route is faster."""
    patches = (arch.image_size // PATCH_SIZE) ** 2
    return patches * arch.embed_dim * arch.depth


def resolve_runtime(runtime: str | None, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``ort`` (an onnxruntime route; ``load_model`` picks which by encoder size) on CPU when
    onnxruntime is installed, else ``eager`` (one log line saying why)."""
    runtime = runtime or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime in ("ort", "onnx") and not runtime_onnx.available():
        raise ValueError(f"runtime {runtime!r} needs onnxruntime, onnx and onnxscript (the versions in setup.py); "
                         "install them or use runtime 'eager'")
    if runtime != "auto":
        return runtime
    if torch.device(device).type != "cpu":
        return "eager"
    if not runtime_onnx.available():
        logger.warning("onnxruntime/onnx/onnxscript not installed: running the model in eager PyTorch (slower); "
                       "pip install the versions in setup.py for the faster route")
        return "eager"
    return "ort"


def onnx_graph(network: SamSegmenter, model_path: str | os.PathLike, part: str, threads: int | None = None,
               source_sha256: str | None = None) -> tuple[Any, Path]:
    """A session of the ONNX ``encoder`` or ``decoder`` of ``model_path`` (``network`` loaded from it), built once and
    cached beside the model (see ``scripts.deploy.onnx_files``)."""
    source = source_sha256 or runtime_onnx.file_sha256(model_path)
    sam, size = network.sam, network.image_size
    if part == "encoder":
        mean_std = (sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())
        build = lambda path: runtime_onnx.build_encoder_onnx(sam.image_encoder, size, path, source, mean_std)  # noqa: E731
    else:
        segmenter = {"prompt_mode": network.prompt_mode, "refine_margin": network.refine_margin}
        build = lambda path: runtime_onnx.build_decoder_onnx(sam.prompt_encoder, sam.mask_decoder, size, path,  # noqa: E731
                                                             source, segmenter)
    return runtime_onnx.cached_graph(model_path, part, size, build, threads or torch.get_num_threads(), source)


def use_ort_encoder(network: SamSegmenter, model_path: str | os.PathLike, threads: int | None = None) -> SamSegmenter:
    """Replace ``network.sam.image_encoder`` by an onnxruntime encoder built (or cached) from ``model_path``."""
    session, path = onnx_graph(network, model_path, "encoder", threads)
    network.sam.image_encoder = runtime_onnx.OrtImageEncoder(session, path)
    return network


class OnnxSegmenterModule(nn.Module):
    """The torch-free predictor (``scripts.deploy.predictor``) behind the network interface: the ``onnx`` runtime.

    Images ``B x 1 x H x W`` in [0, 1] and optional ``B x 4`` boxes in image pixels, as ``SamSegmenter`` takes
    them; every step but the tensor conversion is the predictor's (numpy and onnxruntime).
    """

    def __init__(self, segmenter: OnnxSegmenter, arch: SamArch, prompt_mode: str, low_res_output: bool = False) -> None:
        super().__init__()
        self.segmenter, self.arch, self.prompt_mode, self.low_res_output = segmenter, arch, prompt_mode, low_res_output
        self.refine_margin = segmenter.refine_margin
        self.record_evidence, self.last_evidence = False, []  # as SamSegmenter's (the quality handler sets it)

    @property
    def image_size(self) -> int:
        return self.arch.image_size

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        if images.shape[1] != 1:
            raise ValueError(f"the onnx runtime takes single-channel images (as the bundle's loader gives), got {images.shape[1]}")
        out, self.last_evidence = [], []
        for i, image in enumerate(images[:, 0].detach().float().cpu().numpy()):
            box = None if boxes is None else boxes[i].detach().cpu().numpy()
            low, _, found = self.segmenter.passes(image, box, self.prompt_mode, with_evidence=self.record_evidence)
            self.last_evidence.append(found)
            out.append(low if self.low_res_output else imaging.resize(low, *image.shape))
        return torch.from_numpy(np.stack(out))[:, None].to(images.device)


def use_onnx_segmenter(network: SamSegmenter, model_path: str | os.PathLike, threads: int | None = None) -> OnnxSegmenterModule:
    """The whole segmenter of ``model_path`` in onnxruntime + numpy (its two graphs built once, cached beside it)."""
    source = runtime_onnx.file_sha256(model_path)
    for part in ("encoder", "decoder"):
        onnx_graph(network, model_path, part, threads, source)
    segmenter = OnnxSegmenter(model_path, threads=threads or torch.get_num_threads())
    return OnnxSegmenterModule(segmenter, network.arch, network.prompt_mode, network.low_res_output)


def load_model(path: str | os.PathLike, arch: str | dict | None = None, image_size: int | None = None,
               prompt_mode: str | None = None, device: str | torch.device = "cpu", runtime: str | None = "auto",
               low_res_output: bool = False) -> nn.Module:
    """Build the inference network a model file describes (see the module docstring).

    ``arch`` / ``image_size`` override what a SAM state dict's shapes say. A training checkpoint with adapters
    is refused with a hint, since adapters are merged by export. The UNet ignores ``prompt_mode`` and ``runtime``.

    ``runtime``: ``"auto"`` (default) picks the fastest route measured by ``adaqat benchmark``: on CPU with
    onnxruntime installed and an encoder large enough (ViT-B/L/H), the whole segmenter in onnxruntime (as
    ``"onnx"``); the small CPU SAM, a GPU, or no onnxruntime: eager (see ``ORT_MIN_ENCODER_WORK``); ``"ort"``
    runs only the image encoder in onnxruntime; ``"onnx"`` runs the whole segmenter in
    onnxruntime with numpy around it (the torch-free predictor); ``"eager"`` keeps everything in PyTorch
    (needed for training, autograd or a GPU). ``low_res_output``: SAM returns its ``image_size/4`` logits (the
    paper's metric setting) instead of logits at the input's size.
    """
    kind, content = read_model_file(path)
    if kind == UNET:
        if low_res_output:
            raise ValueError(f"{os.fspath(path)}: the UNet baseline has no low-resolution output (SAM's metric setting)")
        return _load_unet(content, path, device)
    chosen = resolve_runtime(runtime, device)
    network = _load_sam(path, kind, content, arch, image_size, prompt_mode, device)
    network.low_res_output = bool(low_res_output)
    if chosen == "onnx":
        return use_onnx_segmenter(network, path)
    if chosen == "eager":
        return network
    if runtime == "ort":
        return use_ort_encoder(network, path)
    if encoder_work(network.arch) < ORT_MIN_ENCODER_WORK:
        return network  # small encoders run faster in eager PyTorch (measured; see ORT_MIN_ENCODER_WORK)
    try:
        return use_onnx_segmenter(network, path)  # the fastest measured route for large encoders
    except Exception as exc:
        # "auto" must still give a working model: one line saying why it is the slower one.
        logger.warning("%s: onnxruntime segmenter unavailable (%s: %s); running eager PyTorch", path, type(exc).__name__, exc)
        return network


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
    """The bundle's shipped model: the INT8 artefact when present (the faster route), else FP32; neither: what to do."""
    models = Path(bundle_root) / "models"
    for name in ("model_int8.pt", "model.pt"):
        if (models / name).is_file():
            return str(models / name)
    raise FileNotFoundError(missing_model_hint(models / "model_int8.pt", bundle_root))


def default_foundation_path(bundle_root: str | os.PathLike) -> str:
    """The shipped foundation: the small SAM (stage 0 on JSRT) that adaptation starts from, as a pretrained SAM would be."""
    return str(Path(bundle_root) / "models" / "foundation.pt")


def missing_model_hint(path: str | os.PathLike, bundle_root: str | os.PathLike) -> str:
    """What to do when a shipped model file is absent (a zoo download without its large files, a trimmed clone)."""
    return (f"{path}: model file not found. The bundle's models are listed in {Path(bundle_root) / 'large_files.yml'}: "
            "fetch them with `python -m monai.bundle download` (or `git lfs pull`/a fresh clone), "
            "train your own with `adaqat pipeline`, or pass --model")


__all__ = ["ORT_MIN_ENCODER_WORK", "RUNTIMES", "OnnxSegmenterModule", "default_foundation_path", "default_model_path", "encoder_work", "load_model", "missing_model_hint",
           "onnx_graph", "resolve_runtime", "use_onnx_segmenter", "use_ort_encoder"]
