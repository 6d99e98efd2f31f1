"""Low-rank adapters on SAM's image encoder: AdaLoRA (stage 1) and fixed-rank LoRA, through ``peft``.

peft injects the SVD-form layers (``SVDLinear``: W + B diag(E) A * alpha / r) and owns the rank
allocator; this module chooses the targets in SAM's naming, adds what peft only does inside Hugging
Face models (the orthogonality penalty in the loss) and what the paper's recipe needs on top
(separate q/k/v adapters on the fused ``qkv``, Lambda initialised to 0.1, Lambda-gradient clamping),
and merges the adapters away for export.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from peft import AdaLoraConfig, LoraConfig, inject_adapter_in_model
from peft.tuners.adalora import AdaLoraModel
from peft.tuners.tuners_utils import BaseTunerLayer

ADAPTER_NAME = "default"
# Short names users put in configs -> the module paths they mean inside SAM's image encoder.
TARGET_PATTERNS = {
    "qkv": r"attn\.qkv",
    "q": r"attn\.qkv\.q",
    "k": r"attn\.qkv\.k",
    "v": r"attn\.qkv\.v",
    "proj": r"attn\.proj",
    "lin1": r"mlp\.lin1",
    "lin2": r"mlp\.lin2",
    "mlp": r"mlp\.lin[12]",
}


def target_regex(targets: Sequence[str]) -> str:
    """A peft ``target_modules`` regex for encoder blocks, e.g. ``["qkv", "mlp"]``.

    Anchoring on ``blocks.N.`` keeps ``patch_embed.proj`` (a convolution) out when ``proj`` is asked for.
    """
    unknown = [t for t in targets if t not in TARGET_PATTERNS]
    if unknown or not targets:
        raise ValueError(f"unknown adapter targets {unknown or targets}; choose from {sorted(TARGET_PATTERNS)}")
    alternatives = "|".join(TARGET_PATTERNS[t] for t in targets)
    return rf"(.*\.)?blocks\.\d+\.({alternatives})"


class SplitQKV(nn.Module):
    """SAM's fused ``qkv`` Linear as three Linears ``q``, ``k``, ``v`` (same function, same weights).

    Why: the paper adapts q, k and v with separate adapters; peft adapts whole modules, so the fused
    projection is split first and fused back (``fuse``) for export in the official layout.
    """

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        dim = qkv.out_features // 3
        self.q, self.k, self.v = (nn.Linear(qkv.in_features, dim, bias=qkv.bias is not None) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(qkv.weight[i * dim : (i + 1) * dim])
                if qkv.bias is not None:
                    part.bias.copy_(qkv.bias[i * dim : (i + 1) * dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def fuse(self) -> nn.Linear:
        fused = nn.Linear(self.q.in_features, 3 * self.q.out_features, bias=self.q.bias is not None)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([self.q.weight, self.k.weight, self.v.weight]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        return fused


def split_qkv(encoder: nn.Module) -> None:
    for block in encoder.blocks:
        if isinstance(block.attn.qkv, nn.Linear):
            block.attn.qkv = SplitQKV(block.attn.qkv)


def fuse_qkv(encoder: nn.Module) -> None:
    for block in encoder.blocks:
        if isinstance(block.attn.qkv, SplitQKV):
            block.attn.qkv = block.attn.qkv.fuse()


def add_adalora(
    encoder: nn.Module,
    targets: Sequence[str] = ("qkv",),
    init_r: int = 32,
    target_r: int = 16,
    lora_alpha: float = 32.0,
    total_step: int = 1000,
    tinit: int | None = None,
    tfinal: int | None = None,
    delta_t: int = 10,
    beta1: float = 0.85,
    beta2: float = 0.85,
    orth_reg_weight: float = 0.1,
    lambda_init: float | None = None,
    orthogonal_init: bool = False,
    lambda_grad_clip: float | None = None,
) -> AdaLoraModel:
    """Inject AdaLoRA into ``encoder`` in place; return peft's tuner (it owns the rank allocator).

    ``init_r``/``target_r`` are average ranks per adapted matrix, so the global budget is
    ``target_r x n_matrices``; ``tinit``/``tfinal`` default to 10 % / 20 % of ``total_step``.
    ``lambda_init``, ``orthogonal_init`` and ``lambda_grad_clip`` reproduce the paper's code
    (peft starts Lambda at 0, so the adapted model starts equal to the frozen one).
    """
    if any(t in ("q", "k", "v") for t in targets):
        split_qkv(encoder)
    total_step = max(int(total_step), 3)
    tinit = int(0.1 * total_step) if tinit is None else int(tinit)
    tfinal = int(0.2 * total_step) if tfinal is None else int(tfinal)
    tinit = min(tinit, total_step - tfinal - 1)
    config = AdaLoraConfig(
        target_modules=target_regex(targets),
        init_r=int(init_r),
        target_r=int(target_r),
        lora_alpha=lora_alpha,
        total_step=total_step,
        tinit=max(tinit, 0),
        tfinal=tfinal,
        deltaT=max(int(delta_t), 1),
        beta1=beta1,
        beta2=beta2,
        orth_reg_weight=orth_reg_weight,
    )
    tuner = AdaLoraModel(encoder, config, ADAPTER_NAME)
    for layer in adapter_layers(encoder):
        if orthogonal_init:
            nn.init.orthogonal_(layer.lora_A[ADAPTER_NAME])
            nn.init.orthogonal_(layer.lora_B[ADAPTER_NAME])
        if lambda_init is not None:
            nn.init.constant_(layer.lora_E[ADAPTER_NAME], float(lambda_init))
        if lambda_grad_clip:
            clip = float(lambda_grad_clip)
            layer.lora_E[ADAPTER_NAME].register_hook(lambda grad, c=clip: grad.clamp(-c, c))
    return tuner


def add_lora(encoder: nn.Module, targets: Sequence[str] = ("qkv",), rank: int = 16, lora_alpha: float = 32.0) -> nn.Module:
    """Fixed-rank LoRA (the baseline AdaLoRA is compared against), injected in place."""
    if any(t in ("q", "k", "v") for t in targets):
        split_qkv(encoder)
    config = LoraConfig(target_modules=target_regex(targets), r=int(rank), lora_alpha=lora_alpha)
    return inject_adapter_in_model(config, encoder, ADAPTER_NAME)


def adapter_layers(module: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def orthogonality_penalty(module: nn.Module) -> torch.Tensor:
    """Mean of ||A A^T - I||_F and ||B^T B - I||_F over AdaLoRA matrices (0 without AdaLoRA).

    Why by hand: peft adds this term only to a Hugging Face model's ``outputs.loss``; SAM returns
    plain tensors, so the same formula is applied here and added by the loss.
    """
    terms = []
    for name, param in module.named_parameters():
        # AdaLoRA's A/B are bare ParameterDict entries ("...lora_A.default"); LoRA's are Linear weights.
        is_a, is_b = name.endswith(f"lora_A.{ADAPTER_NAME}"), name.endswith(f"lora_B.{ADAPTER_NAME}")
        if not (is_a or is_b) or not param.requires_grad:
            continue
        cov = param @ param.T if is_a else param.T @ param
        terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def rank_pattern(module: nn.Module, allocation: dict[str, list[bool]] | None = None) -> dict[str, int]:
    """Rank of every AdaLoRA matrix, by module name.

    ``allocation`` is peft's decision (``peft_config.rank_pattern``: the kept singular values of each
    ``...lora_E.default``): its counts are the ranks. Without one the ranks are read from the Lambdas:
    the non-zero ones, which is the allocation only where Lambda no longer trains (stage 2); between
    masking steps AdamW regrows masked Lambdas, so stage 1 passes its allocation (or has none yet: full rank).
    """
    ranks = {}
    for name, sub in module.named_modules():
        lora_e = getattr(sub, "lora_E", None)
        if isinstance(lora_e, nn.ParameterDict) and ADAPTER_NAME in lora_e:
            lam = lora_e[ADAPTER_NAME]
            key = f"{name}.lora_E.{ADAPTER_NAME}"
            if allocation is not None and key in allocation:
                ranks[name] = int(sum(allocation[key]))
            elif lam.requires_grad:
                ranks[name] = int(lam.numel())  # nothing allocated yet: every singular value in play
            else:
                ranks[name] = int((lam.detach() != 0).sum())
    return ranks


def freeze_rank_masks(module: nn.Module) -> None:
    """Stage 2: keep the learned singular values (Lambda) and so the rank pattern fixed."""
    for sub in module.modules():
        lora_e = getattr(sub, "lora_E", None)
        if isinstance(lora_e, nn.ParameterDict):
            for param in lora_e.values():
                param.requires_grad_(False)


def merge_adapters(encoder: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore SAM's own module layout (in place)."""
    for name, sub in list(encoder.named_modules()):
        if isinstance(sub, BaseTunerLayer):
            sub.merge()
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            setattr(parent, child, sub.get_base_layer())
    fuse_qkv(encoder)
    return encoder


def per_layer_prune(tuner: AdaLoraModel, target_r: int) -> dict[str, list[bool]]:
    """Keep the ``target_r`` most important singular values of every matrix (the paper's pruning).

    Why by hand: peft's allocator ranks all matrices together (one global budget); the paper prunes
    each layer to exactly ``target_r`` once. Importance is peft's own smoothed score, so both modes
    read the same signal.
    """
    allocator = tuner.rankallocator
    pattern: dict[str, list[bool]] = {}
    with torch.no_grad():
        for name, param in tuner.model.named_parameters():
            if f"lora_E.{ADAPTER_NAME}" not in name or name not in allocator.exp_avg_ipt:
                continue
            score = allocator._element_score(name).view(-1)
            name_a, name_b = name.replace("lora_E", "lora_A"), name.replace("lora_E", "lora_B")
            if name_a in allocator.exp_avg_ipt and name_b in allocator.exp_avg_ipt:
                score = allocator._combine_ipt(
                    score, torch.cat([allocator._element_score(name_a).mean(1, keepdim=True),
                                      allocator._element_score(name_b).mean(0).view(-1, 1)], dim=1)
                )
            keep = torch.zeros_like(score, dtype=torch.bool)
            keep[torch.topk(score, min(int(target_r), score.numel())).indices] = True
            param.masked_fill_(~keep.view_as(param), 0.0)
            pattern[name] = keep.tolist()
    tuner.peft_config[ADAPTER_NAME].rank_pattern = pattern
    return pattern


def parameter_groups(network: nn.Module, lrs: dict[str, float], weight_decay: float = 1e-4) -> list[dict[str, Any]]:
    """AdamW groups by part: ``adapter`` (lora_*), ``encoder``, ``decoder`` (mask decoder + prompt encoder).

    A part missing from ``lrs`` falls back to ``lrs["default"]``; parts with nothing trainable are dropped.
    """
    groups: dict[str, list[nn.Parameter]] = {"adapter": [], "encoder": [], "decoder": []}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_" in name:
            groups["adapter"].append(param)
        elif "image_encoder." in name:
            groups["encoder"].append(param)
        else:
            groups["decoder"].append(param)
    return [
        {"params": params, "lr": float(lrs.get(part, lrs.get("default", 1e-4))), "weight_decay": weight_decay, "name": part}
        for part, params in groups.items()
        if params
    ]


__all__ = [
    "ADAPTER_NAME",
    "SplitQKV",
    "add_adalora",
    "add_lora",
    "adapter_layers",
    "freeze_rank_masks",
    "merge_adapters",
    "orthogonality_penalty",
    "parameter_groups",
    "per_layer_prune",
    "rank_pattern",
    "target_regex",
]
