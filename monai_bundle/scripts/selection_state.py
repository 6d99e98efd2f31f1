"""Best-model selection and early stopping as a checkpointable object.

Why: after a resume, MONAI's key-metric ``CheckpointSaver`` has forgotten the best score (so the first
validation overwrites ``model.pt`` even if it is worse), ``EarlyStopHandler`` has forgotten its
patience counter and the evaluator its best metric. Saving them with the resumable checkpoint makes
the resumed run choose and stop exactly as the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any


class ModelSelectionState:
    """State of the best-model saver, the early stopper and the evaluator's best metric.

    Put it in the trainer's ``CheckpointSaver`` ``save_dict`` and the ``CheckpointLoader``'s ``load_dict``;
    nothing is attached to an engine. Any of the three may be ``None`` (e.g. a config without early stopping).

    Args:
        best_saver: the validation's ``CheckpointSaver`` with ``save_key_metric=True``.
        early_stop: MONAI's ``EarlyStopHandler`` (its ignite ``EarlyStopping`` exists after ``set_trainer``).
        evaluator: the ``SupervisedEvaluator`` whose ``state.best_metric`` is logged.
    """

    def __init__(self, best_saver: Any = None, early_stop: Any = None, evaluator: Any = None) -> None:
        self.best_saver = best_saver
        self.early_stop = early_stop
        self.evaluator = evaluator

    def _key_metric_checkpoint(self) -> Any:
        return getattr(self.best_saver, "_key_metric_checkpoint", None)

    def _stopper(self) -> Any:
        return getattr(self.early_stop, "_handler", None)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if (checkpoint := self._key_metric_checkpoint()) is not None:
            state["best_saver"] = {"saved": [(float(item.priority), item.filename) for item in checkpoint._saved]}
        if (stopper := self._stopper()) is not None:
            best = stopper.best_score
            state["early_stop"] = {"counter": int(stopper.counter), "best_score": None if best is None else float(best)}
        if self.evaluator is not None:
            state["evaluator"] = {"best_metric": float(self.evaluator.state.best_metric),
                                  "best_metric_epoch": int(self.evaluator.state.best_metric_epoch)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "best_saver" in state and (checkpoint := self._key_metric_checkpoint()) is not None:
            checkpoint.load_state_dict({"_saved": [tuple(item) for item in state["best_saver"]["saved"]]})
        if "early_stop" in state and (stopper := self._stopper()) is not None:
            stopper.counter, stopper.best_score = state["early_stop"]["counter"], state["early_stop"]["best_score"]
        if "evaluator" in state and self.evaluator is not None:
            self.evaluator.state.best_metric = state["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]


__all__ = ["ModelSelectionState"]
