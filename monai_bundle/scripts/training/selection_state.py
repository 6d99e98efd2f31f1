"""Best-model selection and early stopping as one object: checkpointable, and gated by AdaLoRA's rank budget.

Why: after a resume, MONAI's key-metric ``CheckpointSaver`` has forgotten the best score (so the first
validation overwrites ``model.pt`` even if it is worse), ignite's ``EarlyStopping`` its patience counter and
the evaluator its best metric. Saving them with the resumable checkpoint makes the resumed run choose and
stop exactly as the uninterrupted one would. And while AdaLoRA still prunes rank, a model has more rank
than the target; attached to the trainer, this object listens to the AdaLoRA handler's budget events and
keeps selection to models at the final budget.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine

from .adalora_handler import RankBudgetEvents


class ModelSelectionState:
    """State of the best-model saver, the early stopper and the evaluator's best metric.

    Put it in the trainer's ``CheckpointSaver`` ``save_dict`` and the ``CheckpointLoader``'s ``load_dict``,
    and :meth:`attach` it to the trainer. Any of the three may be ``None`` (e.g. a config without early stopping).

    Args:
        best_saver: the validation's :class:`.checkpoint_saver.AtomicCheckpointSaver` with ``save_key_metric=True``.
        early_stop: ignite's ``EarlyStopping``.
        evaluator: the ``SupervisedEvaluator`` whose ``state.best_metric`` is logged.
    """

    def __init__(self, best_saver: Any = None, early_stop: Any = None, evaluator: Any = None) -> None:
        self.best_saver = best_saver
        self.early_stop = early_stop
        self.evaluator = evaluator

    def attach(self, trainer: Engine) -> None:
        """Follow the AdaLoRA handler's budget events on ``trainer`` (a no-op when no such handler fired them)."""
        if not trainer.has_registered_events(RankBudgetEvents.BUDGET_MOVING):
            return
        if not trainer.has_event_handler(self.hold_patience, RankBudgetEvents.BUDGET_MOVING):
            trainer.add_event_handler(RankBudgetEvents.BUDGET_MOVING, self.hold_patience)
            trainer.add_event_handler(RankBudgetEvents.BUDGET_FINAL, self.forget_bests)

    def hold_patience(self) -> None:
        """Early stopping does not count an epoch whose model is not at the final budget yet."""
        if self.early_stop is not None:
            self.early_stop.counter = 0

    def forget_bests(self) -> None:
        """The budget became final: earlier (larger-rank) bests no longer compete; selection starts again."""
        if self.best_saver is not None:
            self.best_saver.key_metric_checkpoint.reset()
        if self.evaluator is not None:
            self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = -1.0, -1
        if self.early_stop is not None:
            self.early_stop.reset()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.best_saver is not None:
            state["best_saver"] = dict(self.best_saver.key_metric_checkpoint.state_dict())
        if self.early_stop is not None:
            state["early_stop"] = dict(self.early_stop.state_dict())
        if self.evaluator is not None:
            state["evaluator"] = {"best_metric": float(self.evaluator.state.best_metric),
                                  "best_metric_epoch": int(self.evaluator.state.best_metric_epoch)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "best_saver" in state and self.best_saver is not None:
            saved = state["best_saver"]
            self.best_saver.key_metric_checkpoint.load_state_dict({"_saved": [tuple(i) for i in saved.get("_saved", saved.get("saved", []))]})
        if "early_stop" in state and self.early_stop is not None:
            self.early_stop.load_state_dict(state["early_stop"])
        if "evaluator" in state and self.evaluator is not None:
            self.evaluator.state.best_metric = state["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]


__all__ = ["ModelSelectionState"]
