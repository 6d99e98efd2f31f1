"""The few distributed facts the bundle's parts need: which process writes, and the network inside DDP.

Why a module: handlers and exporters are shared by single-process and ``torchrun`` runs, so each asks
here instead of testing ``torch.distributed`` itself. Everything goes through ignite's ``idist``, which
answers rank 0 / world size 1 when no process group exists.
"""

from __future__ import annotations

import json
from typing import Any

import ignite.distributed as idist
import torch
import torch.nn as nn


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (``network`` itself otherwise)."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs: the one process that writes files and logs."""
    return idist.get_rank() == 0


def is_distributed() -> bool:
    return idist.get_world_size() > 1


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with ``src``'s values (no-op in a single process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            tensor.data.copy_(idist.broadcast(tensor.data, src=src))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s ``obj`` (anything JSON can hold) on every process; ``obj`` itself in a single process.

    ignite broadcasts tensors, numbers and strings; a JSON string carries the rank pattern (a dict of lists).
    """
    if not is_distributed():
        return obj
    return json.loads(idist.broadcast(json.dumps(obj) if idist.get_rank() == src else None, src=src, safe_mode=True))


def default_backend() -> str:
    """``nccl`` where CUDA is available, ``gloo`` otherwise (CPU runs, tests)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


__all__ = ["broadcast_object", "broadcast_tensors", "default_backend", "is_distributed", "is_main_process", "unwrap"]
