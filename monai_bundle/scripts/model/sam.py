"""Build Segment Anything at any size and load official checkpoints into it.

Why not ``segment_anything.sam_model_registry``: it fixes the input at 1024 px, loads with a plain
``torch.load`` (arbitrary pickles) and has no CPU-sized configuration. The parts themselves are
segment-anything's own classes; this module only chooses their sizes and checks what is loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .attention import use_sdpa

PATCH_SIZE = 16
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamArch:
    """Every size that distinguishes one SAM from another (all else is segment-anything's default)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["global_attn_indexes"] = list(self.global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamArch":
        data = dict(data)
        data["global_attn_indexes"] = tuple(data["global_attn_indexes"])
        return cls(**data)


ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamArch(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamArch(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # CPU-sized SAM (METHOD.md): same structure, 256 px input, a 4-block encoder and a slim decoder.
    "small": SamArch(
        embed_dim=256,
        depth=4,
        num_heads=8,
        global_attn_indexes=(1, 3),
        image_size=256,
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=8,
        mask_in_chans=16,
        iou_head_hidden_dim=128,
    ),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching the model."""


def resolve_arch(arch: str | SamArch | Mapping[str, Any], image_size: int | None = None) -> SamArch:
    """Turn an arch name, dict or SamArch into a SamArch, optionally at another input size."""
    if isinstance(arch, SamArch):
        spec = arch
    elif isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown SAM arch {arch!r}; choose one of {sorted(ARCHS)}")
        spec = ARCHS[arch]
    else:
        spec = SamArch.from_dict(arch)
    if image_size is not None and image_size != spec.image_size:
        if image_size % PATCH_SIZE:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {PATCH_SIZE}")
        spec = replace(spec, image_size=int(image_size))
    return spec


def build_sam(
    arch: str | SamArch | Mapping[str, Any] = "small",
    image_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> Sam:
    """Build a SAM from segment-anything's parts; load ``checkpoint`` (official layout) if given."""
    spec = resolve_arch(arch, image_size)
    grid = spec.image_size // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=spec.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    use_sdpa(sam.image_encoder)
    sam.arch = spec  # type: ignore[attr-defined]  # kept so exports can record what was built
    if checkpoint is not None:
        load_sam_checkpoint(sam, checkpoint)
    return sam


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensors-only state dict safely (``weights_only=True``), unwrapping trainer checkpoints.

    Accepts the official SAM ``.pth`` layout, a MONAI ``CheckpointSaver`` file (``{"model": ...}``)
    and ``{"state_dict": ...}``; the ``module.`` prefix of DataParallel is dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals
        raise CheckpointError(
            f"{path}: not a readable tensors-only checkpoint (loaded with weights_only=True): {exc}"
        ) from exc
    for wrapper_key in ("model", "state_dict", "network"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper_key), dict):
            obj = obj[wrapper_key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resample of the absolute position embedding (1, g, g, C) to (1, grid, grid, C)."""
    if pos_embed.shape[1] == grid and pos_embed.shape[2] == grid:
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resample_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resample of a relative position table (L, head_dim) to (length, head_dim), as SAM does at run time."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).t().to(rel_pos.dtype)


def adapt_state_dict_to(model_state: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor], prefix: str = "",
                        source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Resample position embeddings of ``state`` where the model was built for another input size.

    Logs one warning naming both sizes: a SAM run away from its native size is a choice to see, not a default.
    """
    adapted = dict(state)
    for key, value in state.items():
        target = model_state.get(prefix + key)
        if target is None or target.shape == value.shape:
            continue
        if key.endswith("image_encoder.pos_embed"):
            logger.warning("%s: SAM made for %d px input, run at %d px: position embeddings resampled",
                           source, value.shape[1] * PATCH_SIZE, target.shape[1] * PATCH_SIZE)
            adapted[key] = resample_pos_embed(value, target.shape[1])
        elif key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and target.shape[1] == value.shape[1]:
            adapted[key] = resample_rel_pos(value, target.shape[0])
    return adapted


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected and shape-mismatched key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(problems))


def load_sam_checkpoint(sam: Sam, checkpoint: str | os.PathLike) -> Sam:
    """Load an official-layout SAM state dict into ``sam``, resampling position embeddings if needed."""
    # The bundle's network holds SAM under "sam.": its model.pt reads as an official checkpoint too.
    state = {k.removeprefix("sam."): v for k, v in read_state_dict(checkpoint).items()}
    state = adapt_state_dict_to(sam.state_dict(), state, source=os.fspath(checkpoint))
    check_state_dict(sam, state, os.fspath(checkpoint))
    sam.load_state_dict(state, strict=True)
    return sam


def infer_arch(state: Mapping[str, torch.Tensor]) -> SamArch:
    """Recover a SamArch from the tensor shapes of an official-layout state dict.

    Why: users bring bare ``.pth`` files (official or ours) with no description; every size but
    the decoder's head count is readable from the shapes, so the right model can be built for them.
    """
    prefix = "image_encoder."
    if prefix + "pos_embed" not in state:
        raise CheckpointError("not a SAM state dict: image_encoder.pos_embed is missing")
    pos = state[prefix + "pos_embed"]
    grid, embed_dim = pos.shape[1], pos.shape[3]
    depth = len({k.split(".")[2] for k in state if k.startswith(prefix + "blocks.")})
    head_dim = state[prefix + "blocks.0.attn.rel_pos_h"].shape[1]
    lengths = [state[f"{prefix}blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
    global_idx = tuple(i for i, n in enumerate(lengths) if n == 2 * grid - 1)
    local = [n for i, n in enumerate(lengths) if i not in global_idx]
    window = (local[0] + 1) // 2 if local else 14
    decoder_layers = {k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")}
    return SamArch(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=global_idx,
        image_size=grid * PATCH_SIZE,
        window_size=window,
        prompt_embed_dim=state[prefix + "neck.0.weight"].shape[0],
        decoder_mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        decoder_depth=len(decoder_layers),
        mask_in_chans=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )


def checkpoint_arch(path: str | os.PathLike) -> SamArch:
    """The SAM a file holds, at its native input size: the arch an ``adaqat-sam-fp32`` file records, else the
    shapes of its state dict (official checkpoints, earlier exports, training checkpoints with adapters)."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{os.fspath(path)}: not a readable tensors-only checkpoint: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("arch"), dict):
        return SamArch.from_dict(obj["arch"])
    state = {k.removeprefix("sam."): v for k, v in read_state_dict(path).items()}
    try:
        return infer_arch(state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: not a SAM checkpoint (no {exc} in it)") from exc


def arch_for(arch: str | SamArch | Mapping[str, Any] | None = "auto", image_size: int | None = None,
             checkpoint: str | os.PathLike | None = None) -> SamArch:
    """The SAM a run builds: ``arch`` ("auto"/None: read from ``checkpoint``, else the CPU-sized ``small``) at
    ``image_size`` (None: that SAM's native size, 1024 for ViT-B/L/H as the paper runs them)."""
    if arch in (None, "auto"):
        spec = checkpoint_arch(checkpoint) if checkpoint else ARCHS["small"]
    else:
        spec = resolve_arch(arch)
    return resolve_arch(spec, image_size)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ARCHS",
    "CheckpointError",
    "arch_for",
    "checkpoint_arch",
    "SamArch",
    "build_sam",
    "check_state_dict",
    "count_parameters",
    "infer_arch",
    "load_sam_checkpoint",
    "read_state_dict",
    "resample_pos_embed",
    "resample_rel_pos",
    "resolve_arch",
]
