"""Quantization: the QAT fake-quantizer, the on-disk INT8 artefact and the INT8 runtimes (eager kernels, onnxruntime).

May import: ``scripts.atomic``, torch, onnx/onnxruntime (lazily); not the model, data or training packages.
"""
