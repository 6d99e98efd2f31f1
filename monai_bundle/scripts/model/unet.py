"""The prompt-free baseline a user would pick instead of SAM: MONAI's 2-D UNet behind the bundle's interface.

Why a wrapper: the evaluation and inference configs feed images at their original size and score at that
size; SAM's wrapper resizes to its input size and back, so the UNet does the same (and accepts, then
ignores, the ``boxes`` the training config passes). Its file (``scripts.model_files``) records the
constructor arguments, so every caller can load it like a SAM file.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet


class ResizingUNet(nn.Module):
    """MONAI ``UNet`` (1 channel in, 1 logit channel out) run at ``image_size`` x ``image_size``.

    Images of any size are resized to ``image_size`` (bilinear, antialiased, as SAM's preprocessing) and
    the logits resized back, so metrics are computed at the same resolution as for SAM.
    """

    prompt_mode = "none"

    def __init__(self, image_size: int = 256, channels: Sequence[int] = (16, 32, 64, 128, 256),
                 strides: Sequence[int] = (2, 2, 2, 2), num_res_units: int = 2) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.config = {"image_size": self.image_size, "channels": list(channels), "strides": list(strides),
                       "num_res_units": int(num_res_units)}
        self.unet = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(channels),
                         strides=tuple(strides), num_res_units=int(num_res_units))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``B x 1 x H x W``; ``boxes`` are accepted for the configs' sake and not used (prompt-free)."""
        if images.shape[1] != 1:  # RGB inputs: the mean is the gray level the UNet was trained on
            images = images[:, :3].mean(dim=1, keepdim=True)
        height, width = images.shape[-2:]
        size = self.image_size
        x = images if (height, width) == (size, size) else F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        logits = self.unet(x)
        if (height, width) == (size, size):
            return logits
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


__all__ = ["ResizingUNet"]
