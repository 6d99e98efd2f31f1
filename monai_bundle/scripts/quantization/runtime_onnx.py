"""Run SAM's image encoder with onnxruntime: the fastest CPU route we measured (docs/benchmarks).

Why: in eager PyTorch the encoder's attention, softmax and layer norms cost as much as its Linears,
so int8 Linears alone cannot make the model much faster; onnxruntime runs the whole encoder as one
fused graph (FP32 ~1.6x faster than eager, INT8 MatMulInteger on top). Only the encoder (the heavy
part) moves to onnxruntime; the prompt encoder, the mask decoder and the two-pass logic stay in torch.

The ``.onnx`` is built on first use and cached beside the model file (``model_int8.pt`` ->
``model_int8.encoder-1024.onnx``), or under ``$ADAQAT_CACHE`` (default ``~/.cache/adaqat``) when that
folder is read-only. It records the SHA-256 of the model file it came from; a cached file whose hash
does not match (the model changed) is never used, it is rebuilt. For an INT8 model the encoder is
exported with its dequantized weights and re-quantized with ``onnxruntime.quantization.quantize_dynamic``
(per channel, symmetric int8: scale = max|w|/127, the artefact's own rule, so the int8 weights are
the artefact's); only the artefact's quantized Linears are quantized, the float-kept ones stay float.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..atomic import atomic_path
from .runtime_eager import Int8Linear

logger = logging.getLogger(__name__)

_META_SOURCE = "adaqat.source_sha256"
_META_IMAGE_SIZE = "adaqat.image_size"
_META_LAYOUT = "adaqat.encoder_onnx_version"
_LAYOUT_VERSION = "1"


def available() -> bool:
    """True when onnxruntime, onnx and the exporter's onnxscript can be imported (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_candidates(model_path: str | os.PathLike, image_size: int, source_sha256: str) -> list[Path]:
    """Where the encoder's .onnx may live: beside the model, then the user cache (keyed by the hash)."""
    model_path = Path(model_path)
    name = f"{model_path.stem}.encoder-{image_size}.onnx"
    cache = Path(os.environ.get("ADAQAT_CACHE") or Path.home() / ".cache" / "adaqat") / "onnx"
    return [model_path.with_name(name), cache / f"{source_sha256[:16]}-{name}"]


def _float_encoder(encoder: nn.Module) -> tuple[nn.Module, list[str]]:
    """A float copy of ``encoder`` (Int8Linear -> Linear holding ``q * scale``) and the int8 layers' names."""
    encoder = copy.deepcopy(encoder)
    names = [n for n, m in encoder.named_modules() if isinstance(m, Int8Linear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent), child, encoder.get_submodule(name).to_float())
    return encoder.eval(), names


def _linear_nodes(model: Any, layer_names: set[str]) -> list[str]:
    """ONNX node names of the MatMuls that compute the Linears called ``layer_names``.

    The dynamo exporter records each node's module path in ``pkg.torch.onnx.name_scopes``
    (``['', 'blocks.0', 'blocks.0.attn', 'blocks.0.attn.qkv', 'linear']``): the Linear's name is the
    last module scope.
    """
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if not scopes:
            continue
        parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
        module = parts[-2] if len(parts) >= 2 else ""
        if module in layer_names:
            found[module] = node.name
    missing = sorted(layer_names - set(found))
    if missing:
        raise RuntimeError(f"ONNX export: no MatMul found for quantized layers {missing[:5]} "
                           f"({len(missing)} in all); cannot quantize them")
    return list(found.values())


def build_encoder_onnx(encoder: nn.Module, image_size: int, path: str | os.PathLike, source_sha256: str) -> Path:
    """Export ``encoder`` (input ``1 x 3 x S x S``) to ``path`` atomically; INT8 layers become int8 MatMuls.

    Int8Linear layers are exported with their dequantized weights and re-quantized by
    ``quantize_dynamic`` (per channel, symmetric int8); every other MatMul stays float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_encoder, int8_layers = _float_encoder(encoder)
    example = torch.zeros(1, 3, image_size, image_size)
    with contextlib.redirect_stdout(io.StringIO()) as chatter, torch.no_grad():
        # external_data=False: one self-contained file (fine below protobuf's 2 GB: ViT-B/L, not ViT-H).
        program = torch.onnx.export(float_encoder, (example,), None, dynamo=True, external_data=False,
                                    input_names=["image"], output_names=["embedding"])
    logger.debug("torch.onnx.export: %s", chatter.getvalue())
    model = program.model_proto
    onnx.helper.set_model_props(model, {_META_SOURCE: source_sha256, _META_IMAGE_SIZE: str(image_size),
                                        _META_LAYOUT: _LAYOUT_VERSION})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if int8_layers:
            quantize_dynamic(model, tmp, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                             # Name the int8 layers rather than exclude the float ones: activation x
                             # activation MatMuls (attention) must stay float too.
                             nodes_to_quantize=_linear_nodes(model, set(int8_layers)),
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            # quantize_dynamic keeps the model's metadata; check rather than trust.
            quantized = onnx.load(tmp)
            if {p.key: p.value for p in quantized.metadata_props}.get(_META_SOURCE) != source_sha256:
                onnx.helper.set_model_props(quantized, {_META_SOURCE: source_sha256, _META_IMAGE_SIZE: str(image_size),
                                                        _META_LAYOUT: _LAYOUT_VERSION})
                onnx.save(quantized, tmp)
        else:
            onnx.save(model, tmp)
    return path


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])


def _matches(session: Any, source_sha256: str, image_size: int) -> bool:
    meta = session.get_modelmeta().custom_metadata_map
    return (meta.get(_META_SOURCE) == source_sha256 and meta.get(_META_IMAGE_SIZE) == str(image_size)
            and meta.get(_META_LAYOUT) == _LAYOUT_VERSION)


def encoder_session(encoder: nn.Module, model_path: str | os.PathLike, image_size: int,
                    threads: int | None = None) -> tuple[Any, Path]:
    """An onnxruntime session of ``encoder`` from a cached .onnx whose recorded hash is ``model_path``'s.

    A missing or stale (hash or size differs) cached file is rebuilt; a read-only model folder moves
    the cache to the user cache folder.
    """
    threads = threads or torch.get_num_threads()
    source = file_sha256(model_path)
    candidates = cache_candidates(model_path, image_size, source)
    for path in candidates:
        if path.is_file():
            try:
                session = _session(path, threads)
            except Exception as exc:  # a damaged cache file: rebuild it
                logger.warning("%s: unreadable cached ONNX encoder (%s); rebuilding", path, exc)
                continue
            if _matches(session, source, image_size):
                return session, path
            logger.info("%s: built from another version of %s; rebuilding", path, model_path)
    for path in candidates:
        try:
            build_encoder_onnx(encoder, image_size, path, source)
        except PermissionError:
            continue
        logger.info("built ONNX image encoder %s", path)
        return _session(path, threads), path
    raise PermissionError(f"cannot write the ONNX encoder to any of {[str(p) for p in candidates]}")


class OrtImageEncoder(nn.Module):
    """Drop-in for ``sam.image_encoder``: runs the exported encoder with onnxruntime, one image at a time.

    One image per run because the graph is exported for batch 1 (CPU throughput does not gain from
    batching a ViT this size); outputs are stacked back into ``B x C x H x W``.
    """

    def __init__(self, session: Any, onnx_path: str | os.PathLike) -> None:
        super().__init__()
        self.session = session
        self.onnx_path = str(onnx_path)
        self._input = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            raise RuntimeError("OrtImageEncoder runs on CPU; load the model with runtime='eager' for other devices")
        batch = images.detach().float().contiguous().numpy()
        outs = [self.session.run(None, {self._input: np.ascontiguousarray(batch[i : i + 1])})[0] for i in range(len(batch))]
        return torch.from_numpy(np.concatenate(outs, axis=0))

    def __getstate__(self) -> dict:
        raise TypeError("OrtImageEncoder holds an onnxruntime session and cannot be pickled or copied; "
                        "load the model again instead")

    def extra_repr(self) -> str:
        return f"onnx_path={self.onnx_path!r}"


__all__ = ["OrtImageEncoder", "available", "build_encoder_onnx", "cache_candidates", "encoder_session", "file_sha256"]
