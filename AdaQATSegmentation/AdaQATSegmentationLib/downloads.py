"""Optional download of a model file listed in the bundle's ``large_files.yml`` (url + md5).

Asks first, telling the size; reports progress; writes to a temporary file and renames it only after the
md5 matches, so a cut download never leaves a half model where the module looks for one.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The download was declined, failed, or gave a file with the wrong checksum."""


@dataclass(frozen=True)
class LargeFile:
    """One entry of ``large_files.yml``: where it goes in the bundle, where it comes from, its md5."""

    path: str
    url: str
    md5: str


def large_files(bundle_root: str | Path) -> list[LargeFile]:
    """Entries of the bundle's ``large_files.yml`` (empty if the bundle has none)."""
    import yaml

    listing = Path(bundle_root) / "large_files.yml"
    if not listing.is_file():
        return []
    data = yaml.safe_load(listing.read_text()) or {}
    return [LargeFile(e["path"], e.get("url", ""), (e.get("hash_val") or "").lower())
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
             progress: Callable[[int, int | None], bool | None] | None = None) -> Path:
    """Download ``entry`` into the bundle after ``confirm(message with size)``; returns the file.

    ``progress(done, total)`` is called per chunk; returning False cancels. An empty md5 in the listing
    is allowed (the file is then only size-checked), a wrong one deletes the download.
    """
    target = Path(bundle_root) / entry.path
    size = remote_size(entry.url)
    if not confirm(f"Download {Path(entry.path).name} ({human_size(size)}) from {entry.url} into {target.parent}?"):
        raise DownloadError(f"download of {entry.path} declined")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None and progress(done, size) is False:
                    raise DownloadError(f"download of {entry.path} cancelled")
        if size is not None and done != size:
            raise DownloadError(f"{entry.url}: received {done} of {size} bytes")
        if entry.md5 and digest.hexdigest() != entry.md5:
            raise DownloadError(f"{entry.url}: md5 {digest.hexdigest()} does not match the expected {entry.md5}")
        os.replace(partial, target)
    except OSError as exc:
        raise DownloadError(f"download of {entry.url} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target
