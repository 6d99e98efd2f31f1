"""The model: SAM at any size (official checkpoints), the segmenter wrapper, AdaLoRA/LoRA adapters, the UNet baseline.

May import: ``scripts.data`` (box prompts), ``scripts.deploy.imaging`` (the two-pass box both routes share), ``scripts.quantization`` (stage-2 fake-quant), torch, segment-anything, peft, MONAI nets.
"""
