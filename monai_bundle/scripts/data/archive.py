"""Running inference over an archive: a manifest or a folder tree as a datalist, disjoint shards per worker, and
resuming a killed run without redoing (or trusting half-done) files.

Why by hand: MONAI's ``partition_dataset`` shards a list but knows nothing of what a previous, killed run already
wrote; here an input is done only when both its mask and its ``<mask>.quality.json`` report (written after the
mask, each atomically: ``scripts.atomic``) exist, so a run killed between the two redoes that file, and a file
is never half-written under its final name. Workers are processes started by ``torchrun`` (or anything that sets
``RANK`` and ``WORLD_SIZE``); they share nothing but the output folder, each writing its own summary part, which
rank 0 merges (``scripts.evaluation.quality_handler``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from monai.data import partition_dataset

from ..deploy.threads import worker_threads
from .cxr_io import CXRInputError, is_supported
from .mask_write import default_mask_name, quality_report_path

MANIFEST_SUFFIXES = (".csv", ".txt", ".lst")
logger = logging.getLogger(__name__)
SUBDIR_KEY = "subdir"  # where, under the output folder, an input's mask goes (its folder relative to the tree's root)


def rank_and_world() -> tuple[int, int]:
    """This worker's rank and the number of workers (``torchrun``'s ``RANK`` / ``WORLD_SIZE``; 0 and 1 alone)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world} is not a worker of a run")
    return rank, world


def share_cores() -> int | None:
    """Lower torch's intra-op threads to this worker's share of the node's cores (``deploy.threads.worker_threads``:
    a machine-wide ``OMP_NUM_THREADS`` would give every torchrun worker all of them); the share, or ``None`` alone."""
    share = worker_threads()
    if share is None:
        return None
    import torch

    if torch.get_num_threads() > share:
        logger.info("%s workers on this node: %d thread(s) each (was %d)",
                    os.environ.get("LOCAL_WORLD_SIZE"), share, torch.get_num_threads())
        torch.set_num_threads(share)
    return share


def rank_name(name: str) -> str:
    """``name`` for this worker's own files (``summary`` -> ``summary.rank1of2`` under 2 workers)."""
    rank, world = rank_and_world()
    return name if world == 1 else f"{name}.rank{rank}of{world}"


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Image paths listed in a manifest: a CSV with an ``image`` (or ``path``/``file``) column, or one path per
    line; relative paths are relative to the manifest's folder."""
    path = Path(path)
    base = path.parent
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise CXRInputError(f"{path}: manifest lists no images")
    header = [h.strip().lower() for h in next(csv.reader([lines[0]]))]
    column = next((c for c in ("image", "path", "file") if c in header), None)
    if path.suffix.lower() == ".csv" and column is None and len(header) > 1:
        raise CXRInputError(f"{path}: manifest has no image/path/file column (columns: {', '.join(header)})")
    if column is not None:
        rows = csv.DictReader(lines, fieldnames=header)
        next(rows)
        entries = [(row.get(column) or "").strip() for row in rows]
    else:
        entries = [line.strip() for line in lines]
    return [{"image": str(p if p.is_absolute() else base / p)} for p in map(Path, entries) if str(p)]


def tree_datalist(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every supported image under ``root`` (recursively, sorted), each with its folder relative to ``root``, so
    masks mirror the tree and ``IM0001.dcm`` in two series do not collide."""
    root = Path(root)
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and is_supported(path):
                items.append({"image": str(path), SUBDIR_KEY: str(Path(dirpath).relative_to(root))})
    if not items:
        raise CXRInputError(f"{root}: folder tree contains no supported images")
    return items


def shard(items: Sequence[dict[str, Any]], rank: int | None = None, world: int | None = None) -> list[dict[str, Any]]:
    """This worker's disjoint, contiguous share of ``items`` (MONAI's ``partition_dataset``, not padded)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    if world == 1:
        return list(items)
    return list(partition_dataset(list(items), num_partitions=world, even_divisible=False)[rank])


def output_paths(item: dict[str, Any], output_dir: str | os.PathLike, output_format: str | None = None) -> tuple[Path, Path]:
    """Where the item's mask and its quality report are written."""
    mask = Path(output_dir) / item.get(SUBDIR_KEY, "") / default_mask_name(item["image"], output_format)
    return mask, quality_report_path(mask)


def split_finished(items: Sequence[dict[str, Any]], output_dir: str | os.PathLike, output_format: str | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(pending, finished)``: an item is finished when its mask and its report both exist (both are written
    atomically, the report last); anything unreadable is pending and will be refused with its reason. A pending
    item's leftover temporaries from a killed run are removed (never trusted, never renamed into place)."""
    pending, finished = [], []
    for item in items:
        try:
            mask, report = output_paths(item, output_dir, output_format)
        except (CXRInputError, ValueError, OSError):
            pending.append(item)
            continue
        if mask.is_file() and report.is_file():
            finished.append(item)
            continue
        pending.append(item)
        for target in (mask, report):  # a killed writer's temporary (scripts.atomic: ".<name>.<random><suffix>")
            if target.parent.is_dir():
                for stale in target.parent.glob(f".{target.name}.*"):
                    stale.unlink(missing_ok=True)
    return pending, finished


def finished_rows(items: Sequence[dict[str, Any]], output_dir: str | os.PathLike,
                  output_format: str | None = None) -> list[dict[str, Any]]:
    """Summary rows of inputs an earlier run finished, rebuilt from their reports."""
    rows = []
    for item in items:
        mask, report_file = output_paths(item, output_dir, output_format)
        try:
            report = json.loads(report_file.read_text())
        except (OSError, ValueError):
            continue
        rows.append({"file": item["image"], "status": "ok", "error": "", "seconds": report.get("seconds", ""),
                     "mask": str(mask), "predicted_dice": report.get("predicted_dice") if report.get("predicted_dice") is not None else "",
                     "review": report.get("review") if report.get("review") is not None else "", "resumed": True})
    return rows


def raise_if_failed(report_dir: str | os.PathLike, name: str = "inputs") -> None:
    """The run's refused inputs as one error, once (``input_screen.raise_if_failed``): alone, this worker's; under
    several workers only rank 0 raises, after its summary merge (every other worker has finished by then), with
    every worker's refusals, since a worker that exits non-zero first makes ``torchrun`` stop the others."""
    from .input_screen import raise_if_failed as raise_screened

    rank, world = rank_and_world()
    if world == 1:
        raise_screened(report_dir, name)
    elif rank == 0:
        raise_screened(report_dir, name, parts=[f"{name}.rank{r}of{world}" for r in range(world)])


class ResumableDatalist(list):
    """The pending items of a run (a list, as the configs' ``Dataset`` takes), remembering the finished ones."""

    def __init__(self, pending: Sequence[dict[str, Any]], finished: Sequence[dict[str, Any]]) -> None:
        super().__init__(pending)
        self.finished = list(finished)


def pending_datalist(items: Sequence[dict[str, Any]], output_dir: str | os.PathLike, output_format: str | None = None,
                     resume: bool = False) -> ResumableDatalist:
    """This worker's shard of ``items``; with ``resume``, without what an earlier run finished."""
    mine = shard(items)
    if not resume:
        return ResumableDatalist(mine, [])
    pending, finished = split_finished(mine, output_dir, output_format)
    return ResumableDatalist(pending, finished)


__all__ = ["MANIFEST_SUFFIXES", "ResumableDatalist", "SUBDIR_KEY", "finished_rows", "output_paths", "pending_datalist", "raise_if_failed",
           "rank_and_world", "rank_name", "read_manifest", "shard", "share_cores", "split_finished", "tree_datalist"]
