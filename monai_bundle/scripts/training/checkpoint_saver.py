"""MONAI's ``CheckpointSaver`` with files that survive SIGKILL: written atomically, replaced before removed.

Why not MONAI's own: its disk saver is built with ``atomic=False`` (a kill mid-write leaves a truncated
``.pt``), and ignite removes the previous file *before* writing the next one, so a kill in between
leaves no resumable checkpoint at all. Here ignite's own atomic ``DiskSaver`` writes (temporary file
in the same folder + ``os.replace``, group/other read kept), and removals wait until the new file is
in place; a fixed filename (``model.pt``, ``checkpoint_final.pt``) is simply replaced, never removed.
Only rank 0 writes in a distributed run (ignite's ``save_on_rank``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver


class ReplaceThenRemoveDiskSaver(DiskSaver):
    """Atomic ``DiskSaver`` that defers ignite's ``remove`` calls until the next file has been written."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename  # fixed name (MONAI's final/key-metric files) or None (ignite's names)
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        target = self.filename or filename
        super().__call__(checkpoint, target, metadata)
        for old in self._pending_removal:
            if old != target:
                super().remove(old)
        self._pending_removal.clear()

    def remove(self, filename: str) -> None:
        name = self.filename or filename
        if name not in self._pending_removal:
            self._pending_removal.append(name)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments, same events) writing through ``ReplaceThenRemoveDiskSaver``."""

    def __init__(self, save_dir: str, save_dict: dict, key_metric_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, key_metric_filename=key_metric_filename, **kwargs)
        fixed_names = {
            "_final_checkpoint": self._final_filename,
            "_key_metric_checkpoint": key_metric_filename,
            "_interval_checkpoint": None,
        }
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = ReplaceThenRemoveDiskSaver(self.save_dir, filename)

    @property
    def key_metric_checkpoint(self) -> Any:
        """ignite's ``Checkpoint`` of the best model (``save_key_metric=True``): its ``state_dict``/``reset``
        are what model selection saves and restarts. MONAI keeps it private; this is the one place reading it."""
        if self._key_metric_checkpoint is None:
            raise ValueError("this CheckpointSaver has no key-metric checkpoint (save_key_metric=False)")
        return self._key_metric_checkpoint


__all__ = ["AtomicCheckpointSaver", "ReplaceThenRemoveDiskSaver"]
