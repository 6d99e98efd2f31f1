"""A small HTTP client for the MONAI Label REST API (standard library only: the core env has no requests).

Why not monailabel's own client: it lives in the MONAI Label environment, while the tests run in the
core one and talk to the server only over HTTP, as Slicer does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@dataclass
class Reply:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def _multipart(fields: dict[str, str], files: dict[str, Path | tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, item in files.items():
        filename, data = (item.name, item.read_bytes()) if isinstance(item, Path) else item
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class MonaiLabelClient:
    """GET/POST against ``base`` (e.g. ``http://127.0.0.1:8000``); 4xx/5xx come back as replies, not exceptions."""

    def __init__(self, base: str, timeout: float = 600) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, query: dict[str, str] | None = None, data: bytes | None = None,
                content_type: str | None = None) -> Reply:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, data=data, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Reply(resp.status, resp.read(), time.perf_counter() - start)
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.read(), time.perf_counter() - start)

    def info(self) -> Reply:
        return self.request("GET", "/info/")

    def infer(self, model: str, image: str = "", file: Path | tuple[str, bytes] | None = None,
              params: dict[str, Any] | None = None, output: str = "image") -> Reply:
        """POST /infer/{model}: a datastore ``image`` id, or an uploaded ``file`` (path or (name, bytes))."""
        query = {"output": output}
        if image:
            query["image"] = image
        body, ctype = _multipart({"params": json.dumps(params or {})}, {"file": file} if file is not None else {})
        return self.request("POST", f"/infer/{urllib.parse.quote(model)}", query, body, ctype)

    def train(self, model: str, params: dict[str, Any]) -> Reply:
        return self.request("POST", f"/train/{urllib.parse.quote(model)}", data=json.dumps(params).encode(),
                            content_type="application/json")

    def train_status(self) -> Reply:
        return self.request("GET", "/train/")

    def wait_train(self, timeout: float = 900, poll: float = 2.0) -> dict[str, Any]:
        """Poll /train/ until the task is no longer SUBMITTED/RUNNING; returns its last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.train_status().json()
            if status.get("status") not in ("SUBMITTED", "RUNNING") or time.monotonic() > deadline:
                return status
            time.sleep(poll)

    def wait_ready(self, timeout: float = 300, alive: Any = None) -> None:
        """Wait until /info/ answers 200; ``alive()`` returning False stops the wait (the server died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError("MONAI Label server exited before it was ready")
            try:
                if self.info().status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"MONAI Label server at {self.base} not ready after {timeout} s")


def listening_addresses(port: int) -> list[str]:
    """Local addresses (kernel hex) of the sockets listening on ``port``, from /proc/net/tcp{,6} (state 0A)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found.append(local.rsplit(":", 1)[0])
    return found


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (nonzero = lung); two empty masks score 0."""
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@contextlib.contextmanager
def running_server(studies_dir: Path, bundle: Path, log_path: Path, timeout: float = 600.0
                   ) -> Iterator[tuple[MonaiLabelClient, subprocess.Popen, int]]:
    """The app (scripts/monailabel_server.sh) on a free loopback port serving ``bundle`` over ``studies_dir``, in a
    session of its own; stopped with the whole session (bash exec'd into the server, and any training child)."""
    import pytest

    repo = Path(__file__).resolve().parents[1]
    port = free_port()
    with open(log_path, "w+") as log:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        proc = subprocess.Popen(["bash", str(repo / "scripts" / "monailabel_server.sh"), str(studies_dir),
                                 "--port", str(port), "--conf", "bundle_path", str(bundle)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        client = MonaiLabelClient(f"http://127.0.0.1:{port}", timeout=timeout)
        try:
            client.wait_ready(timeout=300, alive=lambda: proc.poll() is None)
        except Exception:
            log.seek(0)
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail(f"server did not start:\n{log.read()[-4000:]}")
        try:
            yield client, proc, port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
