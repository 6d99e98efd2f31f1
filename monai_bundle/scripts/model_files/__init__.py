"""Model files: the header that says what a file is, exporting each kind (FP32, INT8, UNet), and the one loader.

May import: every other engine package (it is the top layer: train configs export through it, inference loads through it).
"""
