"""SAM the way most people run it today: Hugging Face ``transformers`` ``SamModel`` in FP32 eager PyTorch.

The benchmark's outside reference (issue: measure against what users run): the same architecture as ours
(``SamArch`` mapped onto ``SamConfig``), random weights (speed does not depend on them), a whole-image box, the
low-resolution mask upsampled to the input size as ``SamProcessor.post_process_masks`` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def sam_config(arch: Any) -> Any:
    """``transformers.SamConfig`` with ``arch``'s sizes (``scripts.model.sam.SamArch``)."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                             image_size=arch.image_size, window_size=arch.window_size,
                             global_attn_indexes=list(arch.global_attn_indexes), output_channels=arch.prompt_embed_dim,
                             num_pos_feats=arch.prompt_embed_dim // 2)
    prompt = SamPromptEncoderConfig(hidden_size=arch.prompt_embed_dim, image_size=arch.image_size,
                                    mask_input_channels=arch.mask_in_chans)
    decoder = SamMaskDecoderConfig(hidden_size=arch.prompt_embed_dim, mlp_dim=arch.decoder_mlp_dim,
                                   num_hidden_layers=arch.decoder_depth, num_attention_heads=arch.decoder_num_heads,
                                   iou_head_hidden_dim=arch.iou_head_hidden_dim)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                     mask_decoder_config=decoder.to_dict())


class HfSamSegmenter(torch.nn.Module):
    """``SamModel`` behind our segmenter's call: ``B x 1 x S x S`` in [0, 1] -> ``B x 1 x S x S`` logits."""

    def __init__(self, arch: Any, seed: int = 0) -> None:
        super().__init__()
        from transformers import SamModel

        torch.manual_seed(seed)
        self.model = SamModel(sam_config(arch)).eval()
        self.image_size = arch.image_size
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        pixels = (images.expand(-1, 3, -1, -1) - self.mean) / self.std  # SamProcessor: rescale to [0, 1], normalise
        pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        boxes = torch.tensor([[[0.0, 0.0, float(self.image_size), float(self.image_size)]]]).expand(batch, 1, 4)
        low = self.model(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks[:, 0]
        return F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)


__all__ = ["HfSamSegmenter", "sam_config"]
