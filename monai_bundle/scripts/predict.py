"""One image in, one cleaned binary mask out: the prediction step shared by reports and callers."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

_KEEP_LUNGS = KeepLargestConnectedComponent(applied_labels=[1], num_components=2)


@torch.no_grad()
def predict_mask(network: torch.nn.Module, image: np.ndarray, box: np.ndarray | None = None,
                 keep_components: int | None = 2) -> np.ndarray:
    """Binary (H, W) uint8 mask for a [0, 1] (H, W) image; ``keep_components`` largest regions kept."""
    device = next(network.parameters()).device if any(True for _ in network.parameters()) else torch.device("cpu")
    x = torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]
    boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=device).reshape(1, 4)
    mask = (torch.sigmoid(network(x, boxes)) > 0.5)[0].to(torch.uint8).cpu()
    if keep_components:
        keep = _KEEP_LUNGS if keep_components == 2 else KeepLargestConnectedComponent(applied_labels=[1], num_components=keep_components)
        mask = keep(mask)
    return np.asarray(mask[0], dtype=np.uint8)
