"""The methods and protocols of the comparison: what the runner trains, the tables list and the plots draw.

A module of its own so that the runner, the tables and the plots all read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = {
    "jsrt": {"split_by": "image", "title": "In-domain: JSRT (split by image)"},
    "transfer": {"split_by": "patient", "title": "Transfer: JSRT foundation adapted to the CC BY sample (split by patient)"},
}
SAM_PROMPTS = ("box", "whole", "two_pass")  # the evaluate config's names; tables call "box" gt_box


@dataclass
class Method:
    """One row group of the table: how it is trained (bundle configs + overrides) and how it is scored."""

    name: str
    label: str
    precision: str  # "fp32" or "int8"
    parent: str | None = None  # the FP32 model an INT8 one is compared with
    prompts: tuple[str, ...] = SAM_PROMPTS
    note: str = ""


METHODS: tuple[Method, ...] = (
    Method("full_ft", "Full fine-tuning", "fp32", note="whole SAM trained (configs train + stage0)"),
    Method("decoder_ft", "Decoder-only fine-tuning", "fp32", note="encoder frozen, no adapter"),
    Method("lora", "LoRA (fixed rank)", "fp32", note="rank = AdaLoRA's target rank, same targets"),
    Method("adalora", "AdaLoRA (stage 1)", "fp32", note="default train config"),
    Method("adalora_qat", "AdaLoRA-QAT INT8 (swept float list)", "int8", parent="adalora",
           note="stage 2 from the AdaLoRA checkpoint; float list chosen by the sensitivity sweep"),
    Method("adalora_qat_paper", "AdaLoRA-QAT INT8 (paper float list)", "int8", parent="adalora",
           note="stage 2 with the paper's float list (encoder qkv + adapters)"),
    Method("ptq", "PTQ INT8 (no QAT)", "int8", parent="adalora",
           note="AdaLoRA model quantized with the swept list and exported, no training"),
    Method("unet", "MONAI UNet (prompt-free)", "fp32", prompts=("none",),
           note="same data and augmentations, same wall-clock as AdaLoRA stage 1 + stage 2"),
)
METHOD_BY_NAME = {m.name: m for m in METHODS}


__all__ = ["METHODS", "METHOD_BY_NAME", "Method", "PROTOCOLS", "SAM_PROMPTS"]
