"""AdaLoRA-QAT engine: the bundle's own code, imported by the configs as ``scripts.*``.

Sub-packages, lowest layer first (a package imports only from the ones listed before it, never from
the tools in the repository's ``adaqat/`` package):

* ``data``: reading and writing radiographs and masks, datalists and splits, MONAI transforms, input screening;
* ``quantization``: weight fake-quant for QAT, the INT8 artefact, the INT8 runtimes (eager kernels, onnxruntime);
* ``model``: the SAM builder, the segmenter wrapper, AdaLoRA/LoRA adapters, the UNet baseline, the stage builder;
* ``evaluation``: per-image metrics and the metrics handler;
* ``training``: loss, AdaLoRA rank-allocation handler, checkpointing, RNG and model-selection state, DDP helpers;
* ``model_files``: what a model file is (its header), exporting each kind and the one loader that reads them.

``atomic`` (atomic file writes) is shared by all. Nothing is imported eagerly, so ``import scripts``
stays cheap; modules import each other relatively.
"""
