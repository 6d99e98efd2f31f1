"""Plain-Python library of the AdaQATSegmentation Slicer module.

Everything here runs without Qt or the Slicer application (the widget only collects choices and shows
progress), so it is tested against real MRML nodes from the ``slicer-core`` wheel. The engine is never
re-implemented: inference runs the bundle's own inference config in a separate process (``child_main.py``).
"""
