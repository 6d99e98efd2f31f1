"""AdaLoRA / LoRA on SAM's encoder through peft: counts, penalty, rank allocation, merging."""

from __future__ import annotations

import copy

import pytest
import torch
from scripts.model.adapters import (
    SplitQKV,
    add_adalora,
    add_lora,
    merge_adapters,
    orthogonality_penalty,
    parameter_groups,
    per_layer_prune,
    rank_pattern,
    target_regex,
)
from scripts.model.sam import build_sam
from scripts.model.segmenter import SamSegmenter


def _frozen_small(seed: int = 0) -> SamSegmenter:
    torch.manual_seed(seed)
    net = SamSegmenter("small", prompt_mode="whole")
    net.sam.image_encoder.requires_grad_(False)
    return net


def test_adalora_trains_adapters_decoder_and_prompt_encoder_only():
    net = _frozen_small()
    decoder = sum(p.numel() for p in net.sam.mask_decoder.parameters()) + sum(p.numel() for p in net.sam.prompt_encoder.parameters())
    add_adalora(net.sam.image_encoder, targets=["qkv"], init_r=8, target_r=4, total_step=50)
    dim, depth = 256, 4
    expected_adapters = depth * 8 * (dim + 3 * dim + 1)  # A (r x in), B (out x r), E (r)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == decoder + expected_adapters
    assert all(not p.requires_grad for n, p in net.sam.image_encoder.named_parameters() if ".lora_" not in n)
    groups = {g["name"]: g for g in parameter_groups(net, {"adapter": 1e-3, "decoder": 1e-4})}
    assert set(groups) == {"adapter", "decoder"} and groups["adapter"]["lr"] == 1e-3


def test_targets_exclude_patch_embedding_conv():
    net = _frozen_small()
    add_adalora(net.sam.image_encoder, targets=["proj", "mlp"], init_r=4, target_r=2, total_step=50)
    names = list(rank_pattern(net.sam.image_encoder))
    assert len(names) == 4 * 3 and not any("patch_embed" in n for n in names)
    with pytest.raises(ValueError, match="unknown adapter targets"):
        target_regex(["attention"])


def test_orthogonality_penalty_is_differentiable_and_zero_for_orthonormal_factors():
    net = _frozen_small()
    add_adalora(net.sam.image_encoder, init_r=8, target_r=4, total_step=50)
    penalty = orthogonality_penalty(net)
    assert penalty.item() > 0.5  # peft starts A, B at N(0, 0.02): far from orthonormal
    penalty.backward()
    assert net.sam.image_encoder.blocks[0].attn.qkv.lora_A["default"].grad.abs().sum() > 0
    net2 = _frozen_small()
    add_adalora(net2.sam.image_encoder, init_r=8, target_r=4, total_step=50, orthogonal_init=True)
    assert orthogonality_penalty(net2).item() < 1e-4


def test_global_budget_reaches_target_and_moves_between_layers():
    """peft's allocation (not the Lambdas, which AdamW regrows between masking steps) is what is logged, and it
    moves rank between layers: at some step one layer gains rank while another loses it."""
    torch.manual_seed(0)
    net = SamSegmenter("small", image_size=64)
    net.sam.image_encoder.requires_grad_(False)
    tuner = add_adalora(net.sam.image_encoder, init_r=8, target_r=4, total_step=40, tinit=4, tfinal=8, delta_t=1)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    images = torch.rand(2, 1, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    history = []
    for step in range(1, 41):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), target) + orthogonality_penalty(net)
        loss.backward()
        optimizer.step()
        tuner.update_and_allocate(step)
        history.append(rank_pattern(net.sam.image_encoder, tuner.peft_config["default"].rank_pattern))
    assert set(history[0].values()) == {8}  # nothing allocated before tinit: full rank
    assert sum(history[-1].values()) == 4 * len(history[-1])  # global budget = target_r x matrices
    moves = [(a, b) for before, after in zip(history, history[1:]) for a in after for b in after
             if after[a] > before[a] and after[b] < before[b]]
    assert moves, history  # uniform pruning would only ever lower every layer


def test_per_layer_prune_keeps_exactly_target_rank_each():
    net = _frozen_small()
    tuner = add_adalora(net.sam.image_encoder, targets=["q", "k", "v"], init_r=8, target_r=3, total_step=20, lambda_init=0.1)
    assert isinstance(net.sam.image_encoder.blocks[0].attn.qkv, SplitQKV)
    net(torch.rand(1, 1, 64, 64)).sum().backward()
    tuner.rankallocator.update_ipt(tuner.model)
    per_layer_prune(tuner, 3)
    ranks = rank_pattern(net.sam.image_encoder, tuner.peft_config["default"].rank_pattern)
    assert len(ranks) == 12 and set(ranks.values()) == {3}


def test_split_qkv_is_the_same_function():
    qkv = torch.nn.Linear(16, 48)
    split = SplitQKV(qkv)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(split(x), qkv(x), atol=1e-6)
    assert torch.allclose(split.fuse().weight, qkv.weight)


@pytest.mark.parametrize("kind", ["adalora", "adalora_qkv_split", "lora"])
def test_merged_model_matches_adapted_model_and_has_official_layout(kind):
    net = _frozen_small()
    encoder = net.sam.image_encoder
    if kind == "lora":
        add_lora(encoder, rank=4)
        for layer in encoder.modules():
            if hasattr(layer, "lora_B") and "default" in getattr(layer, "lora_B", {}):
                torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    else:
        add_adalora(encoder, targets=["q", "k", "v"] if kind.endswith("split") else ["qkv"], init_r=4, target_r=2,
                    total_step=20, lambda_init=0.5)
    net.eval()
    image = torch.rand(1, 1, 96, 80)
    with torch.no_grad():
        adapted = net(image)
        merged_net = copy.deepcopy(net)
        merge_adapters(merged_net.sam.image_encoder)
        merged = merged_net(image)
    assert torch.allclose(adapted, merged, atol=1e-4)
    plain = build_sam("small")
    plain.load_state_dict(merged_net.sam.state_dict(), strict=True)  # official key layout again
