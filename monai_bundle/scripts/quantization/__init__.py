"""Quantization: the QAT fake-quantizer, the on-disk INT8 artefact and the INT8 runtimes (eager kernels, onnxruntime).

May import: ``scripts.atomic``, ``scripts.deploy`` (the ONNX files' conventions), torch, onnx/onnxruntime (lazily).
"""
