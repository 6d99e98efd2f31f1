"""Deployment without PyTorch: the whole segmenter in onnxruntime, pre- and post-processing in numpy.

May import: numpy, onnxruntime, and ``scripts.data`` for reading and writing files; never torch or MONAI (a test
runs it where ``import torch`` fails), so a Slicer install needs neither.
"""
