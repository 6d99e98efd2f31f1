"""How many threads one inference process may use when several share a machine (no torch at import).

Why: ``torchrun`` sets ``OMP_NUM_THREADS=1`` for its workers only when the variable is unset. Where it is set for the
whole machine (a CI job or a cluster profile exporting ``OMP_NUM_THREADS=<cores>``), every worker starts as many
threads as there are cores, and so does onnxruntime's own pool, which spins while it waits. Measured on 2 cores
(``tests/test_archive_infer.py`` under ``OMP_NUM_THREADS=2``): 2 workers of 2 threads each took 4-7 s per
radiograph instead of 0.4 s. Neither torch nor onnxruntime divides the cores among the processes of one node, so
each worker takes its share here: the cores it may run on divided by ``LOCAL_WORLD_SIZE`` (torchrun's count of
workers on this node), never more than it already had: onnxruntime sessions here (``onnx_files.open_session``),
torch's pool in ``scripts.data.archive.share_cores``.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_threads() -> int | None:
    """This worker's share of the node's cores under ``torchrun`` with several local workers; ``None`` alone."""
    try:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return None
    if local_world <= 1:
        return None
    return max(1, available_cores() // local_world)


__all__ = ["available_cores", "worker_threads"]
