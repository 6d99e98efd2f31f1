"""Training: loss, the AdaLoRA rank-allocation handler, atomic checkpoints, RNG and model-selection state, DDP helpers.

May import: ``scripts.model``, ``scripts.atomic``, MONAI handlers, ignite, peft; not ``scripts.model_files``.
"""
