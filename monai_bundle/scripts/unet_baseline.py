"""The prompt-free baseline a user would pick instead of SAM: MONAI's 2-D UNet behind the bundle's interface.

Why a wrapper: the evaluation and inference configs feed images at their original size and score at that
size; SAM's wrapper resizes to its input size and back, so the UNet does the same (and accepts, then
ignores, the ``boxes`` the training config passes). The saved file is self-describing (``format`` +
constructor arguments) so ``export.load_model`` can tell it from a SAM file and every caller can load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet

from .atomic import atomic_torch_save
from .distributed import is_main_process, unwrap

UNET_FORMAT = "adaqat-unet"


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


def export_unet(network: nn.Module, best_checkpoint: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    """Write the best weights (``best_checkpoint``'s ``model`` entry, else the current ones) as a UNet file."""
    network = unwrap(network)
    if not is_main_process():
        return Path(path)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    if best_checkpoint and Path(best_checkpoint).is_file():
        saved = torch.load(os.fspath(best_checkpoint), map_location="cpu", weights_only=True)
        state = saved.get("model", saved)
    return atomic_torch_save({"format": UNET_FORMAT, "config": dict(network.config), "state": state}, path)


def is_unet_file(obj: Any) -> bool:
    """Whether a loaded file object is a UNet baseline file."""
    return isinstance(obj, dict) and obj.get("format") == UNET_FORMAT


def load_unet(obj: dict[str, Any], path: str | os.PathLike, device: str | torch.device = "cpu") -> ResizingUNet:
    """Build the UNet a file describes and load its weights strictly (``path`` only names it in errors)."""
    try:
        network = ResizingUNet(**obj["config"])
        network.load_state_dict(obj["state"], strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a valid {UNET_FORMAT} file ({exc})") from exc
    return network.to(device).eval()


__all__ = ["UNET_FORMAT", "ResizingUNet", "export_unet", "is_unet_file", "load_unet"]
