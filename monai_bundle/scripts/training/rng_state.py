"""Random-number state as a checkpointable object, so a resumed run draws what the uninterrupted one would.

Why: ignite's checkpoints hold the model, optimizer and trainer counters but no generator state, and
MONAI's random transforms do not use the global generators at all: each holds its own
``numpy.random.RandomState`` (``.R``), seeded once when the DataLoader is built. A resume that only
restored torch/numpy/python would replay epoch k+1 with different shuffles, augmentations and prompt
boxes. Everything is stored as tensors and plain numbers, so the checkpoint still loads with
``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import numpy as np
import torch


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_tuple(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


def _random_states(roots: Iterable[Any]) -> list[tuple[str, np.random.RandomState]]:
    """Every ``RandomState`` reachable from ``roots`` through transform attributes, in a stable order.

    Walks ``Compose.transforms`` and nested transforms (``RandAffined`` holds a ``RandAffine`` that
    holds a ``RandAffineGrid``, each with its own ``R``), like ``monai.data.utils.set_rnd`` does.
    """
    found: list[tuple[str, np.random.RandomState]] = []
    seen: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, np.ndarray)):
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            found.append((path, obj))
            return
        if isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]")
            return
        if isinstance(obj, dict):
            for key, item in obj.items():
                visit(item, f"{path}.{key}")
            return
        if type(obj).__module__.split(".")[0] not in ("monai", "scripts"):
            return  # only transforms: never walk into datasets, tensors' owners or third-party objects
        for key, item in vars(obj).items() if hasattr(obj, "__dict__") else ():
            visit(item, f"{path}.{key}")

    for i, root in enumerate(roots):
        visit(root, f"[{i}]")
    return found


class RNGState:
    """torch (CPU and CUDA), numpy, python ``random`` and the given transforms' generators.

    Put it in the ``CheckpointSaver``'s ``save_dict`` and the ``CheckpointLoader``'s ``load_dict``;
    it is read when a checkpoint is written (after validation, at the end of an epoch) and restored at
    ``STARTED``, just before the first epoch the resumed run trains.

    Args:
        transforms: the objects whose random transforms draw during training and validation
            (``@train#dataset.transform``, ``@validate#preprocessing``), walked at save/load time.
    """

    def __init__(self, transforms: Iterable[Any] | None = None) -> None:
        self.transforms = list(transforms or [])

    def state_dict(self) -> dict[str, Any]:
        py_version, py_state, py_gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
            "transforms": {path: _numpy_state(rs.get_state()) for path, rs in _random_states(self.transforms)},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        np.random.set_state(_numpy_tuple(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        saved = state.get("transforms", {})
        current = dict(_random_states(self.transforms))
        if set(saved) != set(current):
            raise ValueError(f"checkpoint's transform generators {sorted(saved)} do not match this config's {sorted(current)}")
        for path, rs in current.items():
            rs.set_state(_numpy_tuple(saved[path]))


__all__ = ["RNGState"]
