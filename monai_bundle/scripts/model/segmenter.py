"""The bundle's network: SAM behind a plain ``B x C x H x W -> B x 1 x H x W`` interface.

MONAI engines, ``verify_net_in_out`` and sliding/simple inferers call ``network(images)``; SAM wants
RGB at its own resolution, a box prompt and per-image decoding. This wrapper does that translation
so that every caller (trainer, evaluator, CLI, Slicer, MONAI Label) sees an ordinary 2-D segmenter.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.boxes import whole_image_box
from ..deploy.imaging import refined_box
from ..deploy.quality import prompt_passes
from ..quantization.fake_quant import activation_groups
from .sam import SamArch, build_sam, resolve_arch

PROMPT_MODES = ("box", "whole", "two_pass")


def refine_boxes(low_res_logits: torch.Tensor, margin_px: float, fallback: torch.Tensor) -> torch.Tensor:
    """Boxes around the two largest components of each first-pass mask, pushed out by ``margin_px``.

    Works in the low-resolution mask grid; boxes come back in that grid's pixel units. Keeping the two
    largest components drops the false positives in borders and padding before they widen the box
    (METHOD.md). An empty first pass keeps the ``fallback`` box. The box itself is the numpy predictor's
    (``deploy.imaging.refined_box``): one function, so both routes turn one mask into one box.
    """
    boxes = fallback.clone()
    for i, logits in enumerate(low_res_logits[:, 0].detach().float().cpu().numpy()):
        box = refined_box(logits, margin_px)
        if box is not None:
            boxes[i] = torch.as_tensor(box, dtype=boxes.dtype)
    return boxes


class SamSegmenter(nn.Module):
    """SAM with a single box prompt per image, returning one mask's logits at the input resolution.

    Args:
        arch: a name from ``sam_model.ARCHS``, a SamArch or its dict.
        image_size: SAM's input size; images of any size are resized to it (aspect not kept, as in
            the paper's 512x512 square resize) and logits are resized back.
        checkpoint: an official-layout SAM state dict to start from.
        prompt_mode: default prompt when no boxes are passed at inference: ``"whole"`` image box,
            ``"two_pass"`` (whole image, then a box refined from that prediction) or ``"box"``
            (boxes must be given). Training with no boxes always uses the whole image.
        refine_margin: margin (pixels of the input image) added around the first-pass mask.
        low_res_output: return SAM's ``image_size/4`` logits instead (the paper's metric setting).
    """

    def __init__(
        self,
        arch: str | SamArch | Mapping[str, Any] = "small",
        image_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        prompt_mode: str = "two_pass",
        refine_margin: float = 10.0,
        low_res_output: bool = False,
    ) -> None:
        super().__init__()
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
        self.arch = resolve_arch(arch, image_size)
        self.sam = build_sam(self.arch, checkpoint=checkpoint)
        self.prompt_mode = prompt_mode
        self.refine_margin = float(refine_margin)
        self.low_res_output = bool(low_res_output)
        # Set by the quality handler: each forward then also keeps the quality evidence of every image
        # (``scripts.deploy.quality``), one list entry per image, in ``last_evidence``.
        self.record_evidence = False
        self.last_evidence: list[dict] = []

    @property
    def image_size(self) -> int:
        return self.arch.image_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] grayscale/RGB/RGBA at any size -> SAM-normalised RGB at ``image_size``."""
        channels = images.shape[1]
        if channels == 1:
            images = images.expand(-1, 3, -1, -1)
        elif channels == 4:
            images = images[:, :3]
        elif channels != 3:
            raise ValueError(f"expected 1, 3 or 4 image channels, got {channels}")
        size = self.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor, return_iou: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, 1, S/4, S/4) for one box per image, boxes in SAM input pixels (and, with
        ``return_iou``, SAM's IoU predictions, B x 1).

        Why a loop: segment-anything's MaskDecoder repeats the image embedding once per prompt, which
        assumes one image per call; one call per image keeps its code untouched.
        """
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        masks, ious = [], []
        for i in range(embeddings.shape[0]):
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes[i : i + 1], masks=None)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks.append(low_res)
            ious.append(iou)
        return (torch.cat(masks, dim=0), torch.cat(ious, dim=0)) if return_iou else torch.cat(masks, dim=0)

    def _passes_with_evidence(self, embeddings: torch.Tensor, sam_boxes: torch.Tensor, height: int, width: int
                              ) -> torch.Tensor:
        """The prompt steps image by image through ``quality.prompt_passes`` (the torch-free predictor's code),
        keeping each image's quality evidence in ``self.last_evidence``."""
        finals, self.last_evidence = [], []
        for i in range(embeddings.shape[0]):
            def decode(box: np.ndarray, i: int = i) -> tuple[np.ndarray, float]:
                low, iou = self.decode(embeddings[i : i + 1], torch.from_numpy(box).reshape(1, 4).to(embeddings.device),
                                       return_iou=True)
                return low[0, 0].float().cpu().numpy(), float(iou.reshape(-1)[0])

            final, _, found = prompt_passes(decode, sam_boxes[i].cpu().numpy(), self.image_size, (height, width),
                                            self.refine_margin, self.prompt_mode == "two_pass", with_evidence=True)
            finals.append(torch.from_numpy(final))
            self.last_evidence.append(found)
        return torch.stack(finals)[:, None].to(embeddings.device)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``B x 1 x H x W`` (or at SAM's low resolution); ``boxes`` are ``B x 4`` xyxy input pixels."""
        batch, _, height, width = images.shape
        size = self.image_size
        if boxes is None:
            if self.prompt_mode == "box" and not self.training:
                raise ValueError("prompt_mode 'box' needs boxes; pass boxes or use 'whole'/'two_pass'")
            boxes = whole_image_box(height, width).to(images.device).repeat(batch, 1)
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=images.device).reshape(batch, 4)
        to_sam = torch.tensor([size / width, size / height, size / width, size / height], device=images.device)
        sam_boxes = boxes * to_sam
        with activation_groups(batch):  # stage 2's activation ranges per image, as the INT8 runtimes see them
            embeddings = self.sam.image_encoder(self.preprocess(images))
        if self.record_evidence and not self.training:
            low_res = self._passes_with_evidence(embeddings, sam_boxes, height, width)
        else:
            low_res = self.decode(embeddings, sam_boxes)
        if self.prompt_mode == "two_pass" and not self.training and not self.record_evidence:
            low_size = low_res.shape[-1]
            margin = self.refine_margin * low_size / max(height, width)
            refined = refine_boxes(low_res, margin, sam_boxes * low_size / size)
            low_res = self.decode(embeddings, refined * size / low_size)
        if self.low_res_output:
            return low_res
        return F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)


__all__ = ["PROMPT_MODES", "SamSegmenter", "refine_boxes"]
