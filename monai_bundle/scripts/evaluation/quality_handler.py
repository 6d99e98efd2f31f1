"""Ignite handler that gives every mask a run writes its quality score, and every run a summary CSV.

Why a handler: the score needs the segmenter's per-image evidence (``network.last_evidence``, kept when
``network.record_evidence`` is set; ``scripts.deploy.quality``) and the path the post-processing wrote the mask
to, which only exist together after an iteration. It writes ``<mask>.quality.json`` beside each mask and, at the
end, ``<output_dir>/<name>.csv`` with one row per input: file, status, error, seconds, mask, predicted Dice,
review (inputs refused by the input screen appear with status ``error`` and the screen's message). With a
``metrics_writer`` (evaluation) the rows also carry the real Dice, joined by image id.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from monai.data import decollate_batch
from monai.utils import IgniteInfo, min_version, optional_import

from ..data.archive import finished_rows, rank_and_world
from ..data.input_screen import failures_path
from ..deploy.quality import SUMMARY_COLUMNS, QualityModel, load_quality_model, write_report, write_summary
from .metrics_handler import _meta_filename, image_id

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

logger = logging.getLogger(__name__)


class QualityScoreWriter:
    """Scores each image's mask with the model's quality calibration and writes the run's summary CSV.

    ``network``: the evaluator's network (a ``SamSegmenter`` or the ``onnx`` runtime's module; a network without
    evidence, the UNet, gets no score). ``model_path``: the model file whose ``.quality.json`` calibrates the
    score (none there: the CSV says so and the score columns stay empty). ``threshold`` overrides the stored one.
    ``screen_name``: the input screen's report name whose refused files become error rows.
    """

    def __init__(self, network: Any, model_path: str | os.PathLike, output_dir: str | os.PathLike,
                 name: str = "summary", threshold: float | None = None, screen_name: str | None = "inputs",
                 metrics_writer: Any = None, finished: Sequence[Mapping[str, Any]] = (),
                 output_format: str | None = None, merge_timeout_s: float = 600.0) -> None:
        self.network, self.output_dir, self.name = network, Path(output_dir), name
        self.threshold = threshold
        self.screen_name = screen_name
        self.metrics_writer = metrics_writer
        self.finished, self.output_format = list(finished), output_format
        self.merge_timeout_s = float(merge_timeout_s)
        self.model: QualityModel | None
        self.model, self.unavailable = (load_quality_model(model_path) if hasattr(network, "record_evidence")
                                        else (None, "this network gives no quality evidence (not a SAM segmenter)"))
        if self.model is None:
            logger.warning("quality score off: %s", self.unavailable)
        self.rows: list[dict[str, Any]] = []
        self._started = 0.0

    @property
    def csv_path(self) -> Path:
        """This worker's summary: ``<name>.csv`` alone; a part ``<name>.rank<r>of<w>[.<run id>].csv`` under torchrun,
        merged into ``<name>.csv`` by rank 0."""
        rank, world = rank_and_world()
        if world == 1:
            return self.output_dir / f"{self.name}.csv"
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        return self.output_dir / f"{self.name}.rank{rank}of{world}{'.' + run_id if run_id else ''}.csv"

    def attach(self, engine: Engine) -> None:
        if self.model is not None:
            self.network.record_evidence = True
        for event, fn in ((Events.EPOCH_STARTED, self.epoch_started), (Events.ITERATION_STARTED, self.iteration_started),
                          (Events.ITERATION_COMPLETED, self.iteration_completed), (Events.COMPLETED, self.completed)):
            if not engine.has_event_handler(fn, event):
                engine.add_event_handler(event, fn)

    def epoch_started(self, engine: Engine) -> None:
        self.rows = []

    def iteration_started(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, Mapping):
            output = decollate_batch(output)
        seconds = (time.perf_counter() - self._started) / max(len(output), 1)
        evidence = list(getattr(self.network, "last_evidence", None) or [])
        for i, item in enumerate(output):
            found = evidence[i] if i < len(evidence) else None
            assessment = self.model.assess(found, self.threshold) if (self.model is not None and found) else None
            mask = item.get("pred_path")
            source = _meta_filename(item.get("image")) or ""
            if mask:  # written last: a mask with its report is a finished input (scripts.data.archive)
                write_report(mask, {"source": source, "seconds": round(seconds, 4),
                                    **(assessment or {"predicted_dice": None, "review": None, "unavailable": self.unavailable})})
            self.rows.append({"id": image_id(item, len(self.rows)), "file": source,
                              "status": "ok", "error": "", "seconds": round(seconds, 4), "mask": mask or "",
                              "predicted_dice": "" if assessment is None else assessment["predicted_dice"],
                              "review": "" if assessment is None else assessment["review"]})

    def _refused_rows(self) -> list[dict[str, Any]]:
        if not self.screen_name:
            return []
        path = failures_path(self.output_dir, self.screen_name)
        if not path.is_file():
            return []
        report = json.loads(path.read_text())
        return [{"id": "", "file": f.get("path", ""), "status": "error", "error": f.get("problem", ""), "seconds": "",
                 "mask": "", "predicted_dice": "", "review": ""} for f in report.get("failures", [])]

    def completed(self, engine: Engine | None = None) -> None:
        """Write this worker's summary (rows of this run, of inputs an earlier run finished, of refused inputs);
        under several workers, rank 0 then merges every worker's part into ``<name>.csv``."""
        columns = list(SUMMARY_COLUMNS)
        rows = self.rows + finished_rows(self.finished, self.output_dir, self.output_format) + self._refused_rows()
        if self.metrics_writer is not None:
            real = {r["id"]: r.get("dice") for r in getattr(self.metrics_writer, "rows", [])}
            columns = ["id", *columns, "real_dice"]
            rows = [{**r, "real_dice": real.get(r["id"], "")} for r in rows]
        write_summary(self.csv_path, rows, columns)
        flagged = sum(1 for r in self.rows if r["review"] is True)
        note = f"{flagged} of {len(self.rows)} masks marked review" if self.model is not None else self.unavailable
        logger.info("summary: %s (%s; %d resumed)", self.csv_path, note, len(self.finished))
        rank, world = rank_and_world()
        if world > 1 and rank == 0:
            self._merge(columns, world)

    def _merge(self, columns: list[str], world: int) -> None:
        """Rank 0: wait for every worker's part of this run, then write ``<name>.csv`` with all rows."""
        parts = [Path(str(self.csv_path).replace(f".rank0of{world}", f".rank{r}of{world}")) for r in range(world)]
        deadline = time.monotonic() + self.merge_timeout_s
        while not all(p.is_file() for p in parts) and time.monotonic() < deadline:
            time.sleep(1.0)
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            logger.warning("summary: parts %s missing after %.0f s; merging the others", ", ".join(missing), self.merge_timeout_s)
        rows = []
        for part in parts:
            if part.is_file():
                with part.open(newline="") as handle:
                    rows += list(csv.DictReader(handle))
        merged = write_summary(self.output_dir / f"{self.name}.csv", rows, columns)
        for part in parts:
            part.unlink(missing_ok=True)
        logger.info("summary of %d workers: %s (%d rows)", world, merged, len(rows))


__all__ = ["QualityScoreWriter"]
