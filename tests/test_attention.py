"""The encoder's SDPA attention computes segment-anything's attention: outputs and every gradient agree."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from scripts.model import attention
from scripts.model.attention import SdpaAttention, use_sdpa
from scripts.model.sam import build_sam


@pytest.mark.parametrize("size, budget", [((8, 8), None), ((14, 14), None), ((5, 7), None), ((14, 14), 3 * 2 * 4 * 14 * 14 * 14),
                                          ((5, 7), 1)])
def test_sdpa_attention_equals_segment_anythings_forward_and_backward(size, budget, monkeypatch):
    """In one piece and in bands of image rows (3 rows at a time, the last band shorter; 1 row at a time)."""
    if budget is not None:
        monkeypatch.setattr(attention, "SCORE_BUDGET", budget)
    torch.manual_seed(0)
    reference = Attention(96, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=size)
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.3)  # relative-position tables far from zero, so the bias matters
    ours = copy.deepcopy(reference)
    assert use_sdpa(ours) == 1 and type(ours) is SdpaAttention
    x = torch.randn(2, *size, 96)
    out_ref, out = reference(x), ours(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5 * out_ref.abs().max().item())
    weights = torch.randn_like(out)
    (out_ref * weights).sum().backward()
    (out * weights).sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters()):
        scale = a.grad.abs().max().item()  # float32 sums of gradients in the hundreds: compare relative to that
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * scale, msg=f"gradient of {name}")


def test_every_encoder_attention_runs_sdpa_and_the_state_dict_is_unchanged():
    sam = build_sam("small")
    attentions = [m for m in sam.image_encoder.modules() if isinstance(m, Attention)]
    assert attentions and all(type(m) is SdpaAttention for m in attentions)
    keys = {k for k in sam.image_encoder.state_dict() if ".attn." in k}
    assert {k.split(".attn.")[1] for k in keys} == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "rel_pos_h", "rel_pos_w"}
