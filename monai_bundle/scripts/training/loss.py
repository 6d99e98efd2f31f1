"""Training loss: BCE + soft Dice (the paper's, equal weights) plus AdaLoRA's orthogonality penalty."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceCELoss

from ..model.adapters import orthogonality_penalty


class SegmentationLoss(nn.Module):
    """``DiceCELoss`` on one-channel logits (BCE-with-logits + Dice) + ``orth_reg_weight`` x penalty.

    ``network`` is held without registering it as a submodule, so the loss has no parameters of its
    own and checkpoints stay the network's.
    """

    def __init__(self, network: nn.Module | None = None, orth_reg_weight: float = 0.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.seg_loss = DiceCELoss(sigmoid=True, lambda_dice=dice_weight, lambda_ce=bce_weight)
        self.orth_reg_weight = float(orth_reg_weight)
        object.__setattr__(self, "network", network)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.seg_loss(logits, target.float())
        if self.orth_reg_weight > 0 and self.network is not None:
            loss = loss + self.orth_reg_weight * orthogonality_penalty(self.network).to(loss.device)
        return loss
