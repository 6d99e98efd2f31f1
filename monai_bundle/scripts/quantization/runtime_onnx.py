"""SAM's image encoder and mask decoder as ONNX graphs: the fastest CPU route we measured, and the torch-free one.

Why: in eager PyTorch the encoder's attention, softmax and layer norms cost as much as its Linears,
so int8 Linears alone cannot make the model much faster; onnxruntime runs the whole encoder as one
fused graph (FP32 ~1.6x faster than eager, INT8 MatMulInteger on top). ``OrtImageEncoder`` swaps the
encoder into a torch network (the ``ort`` runtime); the encoder and decoder graphs together are the
segmenter ``scripts.deploy.predictor`` runs without torch (the ``onnx`` runtime, and 3D Slicer's default).

The graphs are built from a model file on first use and cached beside it (``scripts.deploy.onnx_files``
says where and what they record: the SHA-256 of the model file, so a graph of another version is never
used). For an INT8 model each int8 Linear is exported with its dequantized weights and re-quantized with
``onnxruntime.quantization.quantize_dynamic`` (per channel, symmetric int8: scale = max|w|/127, the
artefact's own rule, so the int8 weights are the artefact's); only the artefact's quantized Linears are
quantized, the float-kept ones stay float. Their inputs are quantized with 7-bit parameters
(``seven_bit_activations``), as the eager runtime and stage 2 do.
"""

from __future__ import annotations

import contextlib
import copy
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
from ..deploy.onnx_files import (
    LAYOUT_VERSION,
    META_IMAGE_SIZE,
    META_LAYOUT,
    META_PREPROCESSING,
    META_SEGMENTER,
    META_SOURCE,
    cache_folder,
    candidates,
    file_sha256,
    find_current,
    json_meta,
    open_session,
)
from .fake_quant import ACTIVATION_QMAX, SCALE_EPS
from .runtime_eager import Int8Linear

logger = logging.getLogger(__name__)



def available() -> bool:
    """True when onnxruntime, onnx and the exporter's onnxscript can be imported (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def _float_copy(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A float copy of ``module`` (Int8Linear -> Linear holding ``q * scale``) and the int8 layers' names."""
    module = copy.deepcopy(module)
    names = [n for n, m in module.named_modules() if isinstance(m, Int8Linear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, module.get_submodule(name).to_float())
    return module.eval(), names


def _scope(node: Any) -> str:
    """The module a node was exported from: the last module scope the dynamo exporter recorded
    (``['', 'blocks.0', 'blocks.0.attn', 'blocks.0.attn.qkv', 'linear']`` -> ``blocks.0.attn.qkv``)."""
    meta = {p.key: p.value for p in node.metadata_props}
    parts = [s.strip(" '\"") for s in meta.get("pkg.torch.onnx.name_scopes", "").strip("[]").split(",")]
    return parts[-2] if len(parts) >= 2 else ""


def _gemm_to_matmul(model: Any, layer_names: set[str]) -> None:
    """Rewrite the Gemm nodes of ``layer_names`` (Linears on 2-D inputs export as Gemm) as MatMul + Add, which
    ``quantize_dynamic`` quantizes like every other int8 layer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Gemm" or _scope(node) not in layer_names or node.input[1] not in inits or \
                attrs.get("transA", None) and attrs["transA"].i or \
                any(k in attrs and attrs[k].f != 1.0 for k in ("alpha", "beta")):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if "transB" in attrs and attrs["transB"].i:
            weight = weight.T
        name = f"{node.input[1]}_as_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight.copy(), name))
        out = node.output[0] if len(node.input) < 3 else f"{node.output[0]}_matmul"
        matmul = onnx_helper().make_node("MatMul", [node.input[0], name], [out], name=f"{node.name}_matmul")
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if len(node.input) >= 3:
            nodes.append(onnx_helper().make_node("Add", [out, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def onnx_helper() -> Any:
    from onnx import helper

    return helper


def _linear_nodes(model: Any, layer_names: set[str]) -> list[str]:
    """ONNX node names of the MatMuls that compute the Linears called ``layer_names``.

    A layer with no node at all was pruned by the exporter (SAM's hypernetworks of the three unused mask
    outputs); a layer whose nodes hold no MatMul cannot be quantized, which is an error.
    """
    found: dict[str, str] = {}
    exported: set[str] = set()
    for node in model.graph.node:
        module = _scope(node)
        exported.add(module)
        if node.op_type == "MatMul" and module in layer_names:
            found[module] = node.name
    missing = sorted((layer_names & exported) - set(found))
    if missing:
        raise RuntimeError(f"ONNX export: no MatMul found for quantized layers {missing[:5]} "
                           f"({len(missing)} in all); cannot quantize them")
    return list(found.values())


def seven_bit_activations(model: Any) -> int:
    """Replace every DynamicQuantizeLinear (8-bit range) by the same computation with ``ACTIVATION_QMAX`` levels.

    Why by hand: onnxruntime's dynamic quantizer only emits DynamicQuantizeLinear, whose range is fixed at 0..255,
    and full-range activations overflow int16 pair sums in int8 GEMMs on CPUs without VNNI (see
    ``fake_quant``). The replacement computes what torch's ``reduce_range`` does and stage 2 simulates:
    lo = min(x, 0), hi = max(x, 0), scale = max((hi - lo) / 127, eps), zero point = round(-lo / scale),
    then QuantizeLinear. Returns the number of nodes replaced.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    qmax = helper.make_tensor("adaqat_act_qmax", TensorProto.FLOAT, [], [float(ACTIVATION_QMAX)])
    zero = helper.make_tensor("adaqat_act_zero", TensorProto.FLOAT, [], [0.0])
    eps = helper.make_tensor("adaqat_act_eps", TensorProto.FLOAT, [], [SCALE_EPS])
    graph.initializer.extend([qmax, zero, eps])
    nodes, replaced = [], 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x, (y, scale, zero_point) = node.input[0], node.output
        t = f"{node.name or y}_act7"
        nodes += [
            helper.make_node("ReduceMin", [x], [f"{t}_min"], keepdims=0),
            helper.make_node("ReduceMax", [x], [f"{t}_max"], keepdims=0),
            helper.make_node("Min", [f"{t}_min", zero.name], [f"{t}_lo"]),
            helper.make_node("Max", [f"{t}_max", zero.name], [f"{t}_hi"]),
            helper.make_node("Sub", [f"{t}_hi", f"{t}_lo"], [f"{t}_range"]),
            helper.make_node("Div", [f"{t}_range", qmax.name], [f"{t}_raw_scale"]),
            helper.make_node("Max", [f"{t}_raw_scale", eps.name], [scale]),
            helper.make_node("Div", [f"{t}_lo", scale], [f"{t}_lo_scaled"]),
            helper.make_node("Neg", [f"{t}_lo_scaled"], [f"{t}_zp_float"]),
            helper.make_node("Round", [f"{t}_zp_float"], [f"{t}_zp_round"]),
            helper.make_node("Clip", [f"{t}_zp_round", zero.name, qmax.name], [f"{t}_zp_clip"]),
            helper.make_node("Cast", [f"{t}_zp_clip"], [zero_point], to=TensorProto.UINT8),
            helper.make_node("QuantizeLinear", [x, scale, zero_point], [y]),
        ]
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


class SamDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder for one box: ``(embedding, box) -> (low-res logits, IoU prediction)``.

    The box is ``1 x 4`` xyxy in SAM input pixels; one mask is returned (``multimask_output=False``), as the
    segmenter decodes.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder

    def forward(self, embedding: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=box, masks=None)
        return self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def build_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
               path: str | os.PathLike, props: dict[str, str]) -> Path:
    """Export ``module`` to ``path`` atomically with ``props`` as metadata; its Int8Linear layers become int8 MatMuls."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_module, int8_layers = _float_copy(module)
    with contextlib.redirect_stdout(io.StringIO()) as chatter, torch.no_grad():
        # external_data=False: one self-contained file (fine below protobuf's 2 GB: ViT-B/L, not ViT-H).
        program = torch.onnx.export(float_module, example, None, dynamo=True, external_data=False,
                                    input_names=input_names, output_names=output_names)
    logger.debug("torch.onnx.export: %s", chatter.getvalue())
    model = program.model_proto
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if int8_layers:
            _gemm_to_matmul(model, set(int8_layers))
            quantize_dynamic(model, tmp, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                             # Name the int8 layers rather than exclude the float ones: activation x
                             # activation MatMuls (attention) must stay float too.
                             nodes_to_quantize=_linear_nodes(model, set(int8_layers)),
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            model = onnx.load(tmp)
            seven_bit_activations(model)
        onnx.helper.set_model_props(model, {**props, META_LAYOUT: LAYOUT_VERSION})
        onnx.save(model, tmp)
    return path


def _props(source_sha256: str, image_size: int, **extra: str) -> dict[str, str]:
    return {META_SOURCE: source_sha256, META_IMAGE_SIZE: str(image_size), **extra}


def build_encoder_onnx(encoder: nn.Module, image_size: int, path: str | os.PathLike, source_sha256: str,
                       pixel_mean_std: tuple[list[float], list[float]] | None = None) -> Path:
    """The image encoder (input ``1 x 3 x S x S``, SAM-normalised) as ONNX; INT8 layers become int8 MatMuls."""
    example = (torch.zeros(1, 3, image_size, image_size),)
    extra = {META_PREPROCESSING: json_meta(pixel_mean_std)} if pixel_mean_std else {}
    return build_onnx(encoder, example, ["image"], ["embedding"], path, _props(source_sha256, image_size, **extra))


def build_decoder_onnx(prompt_encoder: nn.Module, mask_decoder: nn.Module, image_size: int, path: str | os.PathLike,
                       source_sha256: str, segmenter: dict[str, Any]) -> Path:
    """Prompt encoder + mask decoder (:class:`SamDecoder`) as ONNX; ``segmenter`` (prompt mode, refine margin) is
    recorded for the torch-free predictor."""
    grid = image_size // 16
    embedding = torch.zeros(1, prompt_encoder.embed_dim, grid, grid)
    box = torch.tensor([[0.0, 0.0, float(image_size), float(image_size)]])
    return build_onnx(SamDecoder(prompt_encoder, mask_decoder), (embedding, box), ["embedding", "box"],
                      ["low_res_logits", "iou"], path, _props(source_sha256, image_size, **{META_SEGMENTER: json_meta(segmenter)}))


def cached_graph(model_path: str | os.PathLike, part: str, image_size: int, build: Any, threads: int | None = None,
                 source_sha256: str | None = None) -> tuple[Any, Path]:
    """A session of graph ``part`` of ``model_path``: a current cached file, else ``build(path)`` beside the model
    (or in the user cache when that folder is read-only). A damaged or stale file is rebuilt."""
    source = source_sha256 or file_sha256(model_path)
    found = find_current(model_path, part, threads, image_size=image_size, source_sha256=source)
    if found is not None:
        return found
    for path in candidates(model_path, part, image_size, source):
        if Path(path).exists():
            logger.info("rebuilding ONNX %s %s: made from another model file, another size or damaged", part, path)
        try:
            build(path)
        except PermissionError:
            continue
        logger.info("built ONNX %s %s", part, path)
        return open_session(path, threads), path
    raise PermissionError(f"cannot write the ONNX {part} of {model_path} beside it or in {cache_folder()}")


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


__all__ = ["OrtImageEncoder", "file_sha256", "SamDecoder", "available", "build_decoder_onnx", "build_encoder_onnx", "build_onnx",
           "cached_graph", "seven_bit_activations"]
