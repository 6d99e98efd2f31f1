"""Optional download of a model file listed in the bundle's ``large_files.yml`` (url + hash).

Asks first, telling the size; the download itself is ``monai.apps.download_url`` run in the child process
(``child_main.py``: temporary file, hash check, then the file is moved into place), so a cut download or a
wrong hash never leaves a half model where the module looks for one. Progress is read from its output.
"""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import bundle_process

_PERCENT = re.compile(r"(\d+)%\|")


class DownloadError(RuntimeError):
    """The download was declined, failed, or gave a file with the wrong checksum."""


@dataclass(frozen=True)
class LargeFile:
    """One entry of ``large_files.yml``: where it goes in the bundle, where it comes from, its hash."""

    path: str
    url: str
    hash_val: str
    hash_type: str = "md5"


def large_files(bundle_root: str | Path) -> list[LargeFile]:
    """Entries of the bundle's ``large_files.yml`` (empty if the bundle has none)."""
    import yaml

    listing = Path(bundle_root) / "large_files.yml"
    if not listing.is_file():
        return []
    data = yaml.safe_load(listing.read_text()) or {}
    return [LargeFile(e["path"], e.get("url", ""), (e.get("hash_val") or "").lower(), e.get("hash_type") or "md5")
            for e in data.get("large_files", []) if e.get("url")]


def remote_size(url: str, timeout_s: float = 20) -> int | None:
    """Size in bytes announced by the server (None when it does not say)."""
    request = urllib.request.Request(url, method="HEAD") if url.startswith("http") else url
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        size = response.headers.get("Content-Length")
    return int(size) if size else None


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def download(entry: LargeFile, bundle_root: str | Path, confirm: Callable[[str], bool],
             progress: Callable[[float], bool | None] | None = None, python: str | None = None,
             poll_s: float = 0.2) -> Path:
    """Download ``entry`` into the bundle after ``confirm(message with size)``; returns the file.

    ``progress(fraction)`` is called as the child reports it; returning False cancels. An empty hash in
    the listing is allowed (nothing to check against), a wrong one leaves no file behind.
    """
    target = Path(bundle_root) / entry.path
    try:
        size = remote_size(entry.url)
    except OSError as exc:
        raise DownloadError(f"{entry.url}: cannot reach it ({exc})") from exc
    if not confirm(f"Download {Path(entry.path).name} ({human_size(size)}) from {entry.url} into {target.parent}?"):
        raise DownloadError(f"download of {entry.path} declined")
    target.parent.mkdir(parents=True, exist_ok=True)
    run = bundle_process.start_download(entry.url, target, entry.hash_val, entry.hash_type, python=python)
    while run.running():
        for line in run.poll():
            match = _PERCENT.search(line)
            if match and progress is not None and progress(int(match.group(1)) / 100) is False:
                run.cancel()
        time.sleep(poll_s)
    try:
        run.finish()
    except bundle_process.BundleCancelled as exc:
        raise DownloadError(f"download of {entry.path} cancelled") from exc
    except bundle_process.BundleRunError as exc:
        raise DownloadError(f"download of {entry.url} failed: {bundle_process.error_summary(run.lines)}") from exc
    if progress is not None:
        progress(1.0)
    return target
