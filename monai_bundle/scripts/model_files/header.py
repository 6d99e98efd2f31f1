"""What a model file is, read from its own header, so one loader can build the right network from it.

Every file the engine writes is a dict with a ``"format"`` entry:

* ``adaqat-sam-fp32``: a SAM segmenter in float (adapters merged): ``{"format", "format_version", "arch",
  "model": state dict, "meta"}``. The weights sit under ``"model"``, so MONAI's ``CheckpointLoader``
  (``load_dict={"model": network}``) reads the file as it reads any bundle checkpoint;
* ``adaqat-int8``: the real INT8 artefact (``scripts.quantization.int8_artefact``), its ``meta`` holding the arch;
* ``adaqat-unet``: the prompt-free UNet baseline: ``{"format", "config", "state"}``.

Files without a header are SAM state dicts in segment-anything's layout: the official checkpoints
(``sam_vit_b_01ec64.pth``...) and the FP32 files of earlier versions of this project (``sam.`` prefix);
their shapes say which SAM they are.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..model.sam import CheckpointError

SAM_FP32 = "adaqat-sam-fp32"
SAM_INT8 = "adaqat-int8"
UNET = "adaqat-unet"
SAM_STATE_DICT = "sam-state-dict"  # no header: an official checkpoint or an earlier FP32 export
KINDS = (SAM_FP32, SAM_INT8, UNET, SAM_STATE_DICT)
SAM_FP32_VERSION = 1


def read_model_file(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(kind, content)`` of a model file, loaded safely (``weights_only=True``, memory-mapped).

    Raises CheckpointError naming the file when it is missing, not loadable without code execution,
    or carries a header this version does not know.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals
        raise CheckpointError(f"{path}: not a readable tensors-only model file (loaded with weights_only=True): {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a model file (a dict), found {type(obj).__name__}")
    kind = obj.get("format")
    if kind is None:
        return SAM_STATE_DICT, obj
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown model file format {kind!r}; this version reads {', '.join(KINDS[:3])} "
                              "and SAM state dicts")
    return kind, obj


def model_kind(path: str | os.PathLike) -> str:
    """The kind of a model file (one of ``KINDS``)."""
    return read_model_file(path)[0]


__all__ = ["KINDS", "SAM_FP32", "SAM_FP32_VERSION", "SAM_INT8", "SAM_STATE_DICT", "UNET", "model_kind", "read_model_file"]
