"""Running a command whose processes must all end with the test: ``torchrun`` starts each worker in a session of
its own, so neither ``subprocess.run``'s timeout (it kills the direct child only) nor a process-group kill reaches
the workers; left running, they compete with every later test for the cores."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import psutil


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to ``proc`` and every process below it (as a crashed node would), then wait until all are gone."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(tree[1:], timeout=60)
    assert not alive, f"processes still alive after SIGKILL: {[p.pid for p in alive]}"


def run_tree(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True)`` that, past ``timeout``, kills the whole tree and
    raises ``subprocess.TimeoutExpired``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)
