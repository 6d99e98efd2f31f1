"""Run the bundle in a separate process: the UI stays responsive and Cancel works.

The child is ``child_main.py`` beside this file, which runs the bundle's own inference config with MONAI
(or a model download), so Slicer never imports torch or MONAI itself and a crash or an out-of-memory kill
cannot take the application down. Output lines are collected by a reader thread; the caller polls.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# Lines that mean the machine ran out of memory (torch on GPU/CPU, Python, the OOM killer's SIGKILL).
_OOM_PATTERNS = re.compile(r"out of memory|OutOfMemoryError|MemoryError|DefaultCPUAllocator: can't allocate", re.I)
_MISSING_MODULE = re.compile(r"No module named '([^']+)'")
_TQDM_FRACTION = re.compile(r"\[(\d+)/(\d+)\]")
# Coarse milestones of an inference run, for the progress bar (fraction of the whole run).
_MILESTONES = ((re.compile(r"Setting logging properties"), 0.05),  # the bundle's config is parsed
               (re.compile(r"Engine run resuming"), 0.1),  # the model is loaded, inference starts
               (re.compile(r"masks written to"), 1.0))


class BundleRunError(RuntimeError):
    """The bundle failed; ``log`` holds everything it printed (shown in the error dialog)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class BundleOutOfMemoryError(BundleRunError):
    """The run needed more memory than the CPU or GPU had (a smaller model, CPU, or fewer apps help)."""


class MissingDependencyError(BundleRunError):
    """The Python running the bundle lacks a package (``module`` names it)."""

    def __init__(self, message: str, log: str = "", module: str = "") -> None:
        super().__init__(message, log)
        self.module = module


class BundleCancelled(BundleRunError):
    """The user pressed Cancel; the process group was stopped."""


def error_summary(lines: Sequence[str]) -> str:
    """The engine's last ``error:`` line with the indented lines under it (one per bad input), or the
    last line: what the dialog shows before its details."""
    for i in range(len(lines) - 1, -1, -1):
        if "error:" in lines[i].lower() or "error" in lines[i].split(":", 1)[0].lower():
            following = [l.strip() for l in lines[i + 1:i + 6] if l[:1].isspace()]
            return " ".join([lines[i].strip(), *following])
    return lines[-1].strip() if lines else ""


def python_executable() -> str:
    """The interpreter for the child: Slicer's ``PythonSlicer`` inside Slicer, else this Python."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    return found or sys.executable


CHILD = Path(__file__).resolve().with_name("child_main.py")


def infer_command(bundle_root: str | Path, image: str | Path, output_dir: str | Path, model: str | Path | None = None,
                  box: Sequence[float] | None = None, refine_box: bool = True, prompt: str | None = None,
                  device: str | None = None, python: str | None = None, route: str = "torch",
                  quality_threshold: float | None = None) -> list[str]:
    """The child's command line for one image: the bundle's inference config with these overrides ("torch"), or
    the bundle's torch-free predictor on the model's ONNX form ("onnx": numpy + onnxruntime, CPU, no device).
    ``quality_threshold``: predicted Dice under which the mask's quality report says review (None: the
    calibration's own)."""
    if route == "onnx":
        if not model:
            raise ValueError("the onnx route needs a model file (its ONNX graphs lie beside it)")
        cmd = [python or python_executable(), "-m", "scripts.deploy.predictor", str(image), "-o", str(output_dir),
               "--model", str(model)]
        device = None
    else:
        cmd = [python or python_executable(), str(CHILD), "infer", str(image), "-o", str(output_dir),
               "--bundle", str(Path(bundle_root).resolve())]
        if model:
            cmd += ["--model", str(model)]
    if box is not None:
        cmd += ["--box", *(f"{float(v):.2f}" for v in box)]
        if not refine_box:
            prompt = "box"
    if prompt:
        cmd += ["--prompt", prompt]
    if device:
        cmd += ["--device", device]
    if quality_threshold is not None:
        cmd += ["--threshold", f"{float(quality_threshold):g}"]
    return cmd


def child_environment(bundle_root: str | Path) -> dict[str, str]:
    """Environment of the child: the bundle root first on PYTHONPATH (``scripts.*`` is the engine)."""
    env = dict(os.environ)
    parts = [str(Path(bundle_root).resolve())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "0.5")
    return env


@dataclass
class BundleProcess:
    """One running child (inference or download); ``poll()`` from a Qt timer, ``wait()`` from scripts and tests."""

    command: list[str]
    cwd: Path
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    progress: float = 0.0
    _process: subprocess.Popen | None = None
    _queue: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    _cancelled: bool = False
    _timed_out_s: float | None = None
    _reader_done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "BundleProcess":
        """Start the child in its own process group (so Cancel reaches its workers too)."""
        kwargs = {"start_new_session": True} if os.name != "nt" else \
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
        try:
            self._process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                             errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            raise BundleRunError(f"cannot start {self.command[0]}: {exc}") from exc
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:  # text mode: '\r' of progress bars also ends a line
            self._queue.put(line.rstrip())
        self._reader_done.set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def poll(self) -> list[str]:
        """New output lines since the last call (progress is updated from them)."""
        new = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line:
                new.append(line)
                self._update_progress(line)
        self.lines.extend(new)
        return new

    def _update_progress(self, line: str) -> None:
        match = _TQDM_FRACTION.search(line)
        if match and int(match.group(2)) > 0:
            self.progress = max(self.progress, 0.1 + 0.85 * int(match.group(1)) / int(match.group(2)))
        for pattern, value in _MILESTONES:
            if pattern.search(line):
                self.progress = max(self.progress, value)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the whole process tree and reap the child: SIGTERM to the group, SIGKILL after ``grace_s``
        (Windows: taskkill /T). On return the child is no longer running (no zombie, no orphan)."""
        self._cancelled = True
        if self._process is None or self._process.poll() is not None:
            return
        pid = self._process.pid
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
            self._process.wait()
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        # wait for the leader to exit without reaping it: while it is a zombie its pid (= the group's id) cannot be
        # reused, so the SIGKILL below reaches only this run's group (workers that outlived a SIGTERM-ed leader too)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not self._exited_unreaped(pid):
            time.sleep(0.02)
        if self._process.returncode is None:  # not reaped elsewhere: the group id is still ours
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._process.wait()

    def _exited_unreaped(self, pid: int) -> bool:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            return True
        return info is not None and info.si_pid == pid

    def finish(self) -> None:
        """After the process ended: collect the remaining output, raise a typed error if it failed."""
        assert self._process is not None
        returncode = self._process.wait()
        self._reader_done.wait(10)
        self.poll()
        log = "\n".join(self.lines)
        if self._timed_out_s is not None:
            raise BundleRunError(f"the segmentation did not finish within {self._timed_out_s:.0f} s and was stopped", log)
        if self._cancelled:
            raise BundleCancelled("segmentation cancelled", log)
        if returncode == 0:
            self.progress = 1.0
            return
        error = error_summary(self.lines)
        missing = _MISSING_MODULE.search(log)
        if _OOM_PATTERNS.search(log) or returncode in (-signal.SIGKILL if os.name != "nt" else -9, 137):
            raise BundleOutOfMemoryError(
                "the segmentation ran out of memory" + (f" ({error.strip()})" if error else "") +
                "; try the CPU, the INT8 model, or close other programs", log)
        if missing:
            raise MissingDependencyError(f"the Python running the bundle lacks the package '{missing.group(1)}'",
                                         log, module=missing.group(1))
        raise BundleRunError(f"the bundle failed (exit code {returncode}): {error.strip() or 'no output'}", log)

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2, raise_errors: bool = True) -> None:
        """Block until the run ends (scripts, tests); then ``finish`` unless ``raise_errors`` is False.
        A timeout cancels the run."""
        start = time.monotonic()
        while self.running():
            self.poll()
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                self._timed_out_s = timeout_s
                self.cancel()
                break
            time.sleep(poll_s)
        if raise_errors:
            self.finish()


def start_infer(bundle_root: str | Path, image: str | Path, output_dir: str | Path, **options) -> BundleProcess:
    """Start the bundle's inference on one image file; options as for ``infer_command``."""
    command = infer_command(bundle_root, image, output_dir, **options)
    return BundleProcess(command, Path(output_dir), child_environment(bundle_root)).start()


def start_download(url: str, target: str | Path, hash_val: str, hash_type: str = "sha256",
                   python: str | None = None) -> BundleProcess:
    """Start ``monai.apps.download_url`` of ``url`` to ``target`` (hash checked) in a child process."""
    command = [python or python_executable(), str(CHILD), "download", url, str(target), "--hash", hash_val,
               "--hash-type", hash_type]
    return BundleProcess(command, Path(target).parent, child_environment(Path(target).parent)).start()
