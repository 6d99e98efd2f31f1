"""Evaluation: per-image Dice/IoU/NSD/HD95/ASSD, their summary and paired tests, and the evaluator's metrics handler.

May import: ``scripts.atomic``, ``scripts.data`` (file stems as image ids), MONAI metrics, scipy, ignite.
"""
