"""The image encoder's attention through ``F.scaled_dot_product_attention`` (SDPA), in query chunks.

Why: segment-anything's ``Attention`` forms ``q @ k^T``, adds the decomposed relative-position terms, applies
softmax and multiplies by ``v`` as separate ``heads x tokens x tokens`` tensors; at 1024 px a ViT-B global block
(4096 tokens, 12 heads) holds several 0.8 GB tensors at once, in PyTorch and in the exported ONNX graph alike.
Here SDPA takes the relative-position terms as its additive mask and fuses scaling, softmax and the value
product (as Hugging Face's ``SamModel`` does), and queries are taken a band of image rows at a time, so no score
tensor exceeds ``SCORE_BUDGET`` elements whatever the image size. The result is segment-anything's attention
(``tests/test_attention.py``: outputs and gradients). Same parameters and state-dict keys: swapping the class
changes no checkpoint, adapter (peft wraps ``qkv``) or stage-2 fake-quant layer (``qkv``/``proj`` stay Linears).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

# Most score elements (heads x query rows x keys) one chunk may hold: 2**25 floats = 128 MiB. A ViT-B global block
# at 1024 px needs 12 x 4096 x 4096 = 2**27.6, so it runs in 8 bands of 8 image rows; windows (14 x 14) in one.
SCORE_BUDGET = 2**25


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int],
                           first_row: int = 0) -> torch.Tensor:
    """segment-anything's ``add_decomposed_rel_pos`` terms as an additive ``B x n x HW`` mask.

    Not that function itself: it adds the terms into a scores tensor, which SDPA never lets us form.

    ``q`` (unscaled, ``B x n x dim``) holds the queries of image rows ``first_row ..`` (n a whole number of rows).
    """
    h, w = size
    batch, n, dim = q.shape
    rows = n // w
    r_q = q.reshape(batch, rows, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h)[first_row:first_row + rows])
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(batch, n, h * w)


class SdpaAttention(Attention):
    """segment-anything's multi-head attention with relative positions, computed by SDPA in bands of rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = x.shape
        heads = self.num_heads
        # B x heads x HW x dim: 4-D, the layout SDPA's fused kernels and its ONNX export take
        q, k, v = self.qkv(x).reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        band = max(1, min(h, SCORE_BUDGET // (batch * heads * h * w * w)))  # image rows per chunk
        outs = []
        for row in range(0, h, band):
            rows = min(band, h - row)
            q_band = q[:, :, row * w:(row + rows) * w]
            bias = None
            if self.use_rel_pos:
                flat = q_band.reshape(batch * heads, rows * w, -1)
                bias = relative_position_bias(flat, self.rel_pos_h, self.rel_pos_w, (h, w), row)
                bias = bias.view(batch, heads, rows * w, h * w)
            outs.append(F.scaled_dot_product_attention(q_band, k, v, attn_mask=bias, scale=self.scale))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        out = out.view(batch, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, -1)
        return self.proj(out)


def use_sdpa(encoder: torch.nn.Module) -> int:
    """Switch every segment-anything ``Attention`` in ``encoder`` to :class:`SdpaAttention`; return how many."""
    switched = 0
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = SdpaAttention
            switched += 1
    return switched


__all__ = ["SCORE_BUDGET", "SdpaAttention", "relative_position_bias", "use_sdpa"]
