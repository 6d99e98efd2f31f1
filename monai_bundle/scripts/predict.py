"""One image in, one cleaned binary mask out: the prediction step shared by reports and callers."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import FillHoles, KeepLargestConnectedComponent

_FILL = FillHoles(applied_labels=[1])


@torch.no_grad()
def predict_mask(network: torch.nn.Module, image: np.ndarray, box: np.ndarray | None = None,
                 keep_components: int | None = 2) -> np.ndarray:
    """Binary (H, W) uint8 mask for a [0, 1] (H, W) image; ``keep_components`` largest regions kept, holes filled.

    The same steps as the ``postprocessing`` of ``configs/inference.json``, for callers holding an array.
    """
    device = next(iter(network.parameters()), torch.empty(0)).device
    x = torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]
    boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=device).reshape(1, 4)
    mask = (torch.sigmoid(network(x, boxes)) > 0.5)[0].to(torch.uint8).cpu()
    if keep_components:
        mask = KeepLargestConnectedComponent(applied_labels=[1], num_components=keep_components)(mask)
    return np.asarray(_FILL(mask)[0], dtype=np.uint8)
