"""Ignite handler that drives AdaLoRA's rank allocator and records the rank pattern."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, Events

from .adapters import per_layer_prune, rank_pattern
from .atomic import atomic_write_text
from .distributed import broadcast_object, broadcast_tensors, is_distributed, is_main_process, unwrap


class AdaLoRARankHandler:
    """Calls the rank allocator after every optimiser step and logs the per-layer ranks each epoch.

    Fires on ``ITERATION_COMPLETED`` (gradients are still present: MONAI's trainer zeroes them at the
    start of the next iteration) and on ``EPOCH_COMPLETED`` (rank pattern -> log, ``engine.state.metrics
    ["adalora_budget"]`` for TensorBoard, and ``rank_pattern.json`` in ``output_dir``).

    Args:
        network: the network whose ``adalora_tuner`` (set by ``build_network``) is driven; a network
            without one makes this handler a no-op, so configs can always attach it.
        mode: ``"global"`` — peft's AdaLoRA: one budget over all matrices, cubic schedule;
            ``"per_layer"`` — the paper: importance tracked until ``prune_epoch``, then every matrix
            pruned to exactly ``target_r`` once; ``"frozen"`` — stage 2: ranks fixed, only logged.
        best_saver, early_stop, evaluator: the validation's best-metric ``CheckpointSaver``, ``EarlyStopHandler``
            and evaluator (whose logged best is reset with them).
            A model from before the budget is final has more rank than the target, so the saver forgets
            earlier bests once the budget is final, and early stopping waits for it. Attach this handler
            before the ``ValidationHandler`` so the epoch that finalises the budget is validated after it.
    """

    def __init__(self, network: nn.Module, mode: str = "global", prune_epoch: int | None = None, target_r: int | None = None,
                 output_dir: str | None = None, best_saver: Any = None, early_stop: Any = None, evaluator: Any = None,
                 log_name: str = "adaqat.adalora") -> None:
        if mode not in ("global", "per_layer", "frozen"):
            raise ValueError(f"mode must be 'global', 'per_layer' or 'frozen', got {mode!r}")
        if mode == "per_layer" and (prune_epoch is None or target_r is None):
            raise ValueError("mode 'per_layer' needs prune_epoch and target_r")
        self.tuner = getattr(unwrap(network), "adalora_tuner", None)
        self.mode = mode
        self.prune_epoch = prune_epoch
        self.target_r = target_r
        self.output_dir = Path(output_dir) if output_dir else None
        self.logger = logging.getLogger(log_name)
        self.best_saver = best_saver
        self.early_stop = early_stop
        self.evaluator = evaluator
        self.history: list[dict[str, Any]] = []
        self._pruned = False
        self._final_seen = False

    def attach(self, engine: Engine) -> None:
        if self.tuner is None:
            return
        if self.mode != "frozen":
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def iteration_completed(self, engine: Engine) -> None:
        config = self.tuner.peft_config["default"]
        decided_before = config.rank_pattern
        self._allocate(engine)
        if config.rank_pattern is not decided_before:  # a new decision: same steps on every rank
            self._share_decision_of_rank0()

    def _allocate(self, engine: Engine) -> None:
        step = engine.state.iteration
        if self.mode == "global":
            self.tuner.update_and_allocate(step)
            return
        allocator = self.tuner.rankallocator
        if not self._pruned:
            allocator.update_ipt(self.tuner.model)
            if engine.state.epoch >= self.prune_epoch and engine.state.iteration % engine.state.epoch_length == 0:
                per_layer_prune(self.tuner, self.target_r)
                self._pruned = True
        else:
            allocator.mask_using_rank_pattern(self.tuner.model, self.tuner.peft_config["default"].rank_pattern)

    def _share_decision_of_rank0(self) -> None:
        """Broadcast rank 0's masked Lambdas, rank pattern and allocator statistics to every rank."""
        if not is_distributed():
            return
        config = self.tuner.peft_config["default"]
        config.rank_pattern = broadcast_object(config.rank_pattern)
        allocator = self.tuner.rankallocator
        lambdas = [p for name, p in self.tuner.model.named_parameters() if "lora_E" in name]
        statistics = [stats[key] for stats in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for key in sorted(stats)]
        broadcast_tensors(lambdas + statistics)

    def budget_is_final(self, engine: Engine) -> bool:
        if self.mode == "frozen":
            return True
        if self.mode == "per_layer":
            return self._pruned
        config = self.tuner.peft_config["default"]
        return engine.state.iteration >= config.total_step - config.tfinal

    def _gate_selection(self, engine: Engine) -> None:
        """Keep best-model selection and early stopping to models at the final rank budget."""
        if not self.budget_is_final(engine):
            stopper = getattr(self.early_stop, "_handler", None)
            if stopper is not None:
                stopper.counter = 0
            return
        if not self._final_seen:
            self._final_seen = True
            checkpoint = getattr(self.best_saver, "_key_metric_checkpoint", None)
            if checkpoint is not None:
                checkpoint.reset()
            if self.evaluator is not None:
                self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = -1.0, -1
            stopper = getattr(self.early_stop, "_handler", None)
            if stopper is not None:
                stopper.counter, stopper.best_score = 0, None

    def epoch_completed(self, engine: Engine) -> None:
        self._gate_selection(engine)
        ranks = rank_pattern(self.tuner.model)
        budget = sum(ranks.values())
        engine.state.metrics["adalora_budget"] = float(budget)
        self.history.append({"epoch": engine.state.epoch, "iteration": engine.state.iteration, "budget": budget, "ranks": ranks})
        self.logger.info("epoch %d: AdaLoRA rank budget %d over %d matrices: %s", engine.state.epoch, budget, len(ranks),
                         " ".join(f"{name.split('blocks.')[-1]}={r}" for name, r in ranks.items()))
        if self.output_dir is not None and is_main_process():
            atomic_write_text(self.output_dir / "rank_pattern.json", json.dumps({"mode": self.mode, "history": self.history}, indent=1))

    # Resumable: CheckpointSaver/Loader save and restore the allocator's importance statistics.
    def state_dict(self) -> dict[str, Any]:
        if self.tuner is None:
            return {}
        allocator = self.tuner.rankallocator
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": self.tuner.peft_config["default"].rank_pattern,
            "pruned": self._pruned,
            "final_seen": self._final_seen,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tuner is None or not state:
            return
        allocator = self.tuner.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (dict(state[k]) for k in ("ipt", "exp_avg_ipt", "exp_avg_unc"))
        self.tuner.peft_config["default"].rank_pattern = state.get("rank_pattern")
        self._pruned = bool(state.get("pruned", False))
        self._final_seen = bool(state.get("final_seen", False))
        self.history = list(state.get("history", []))


__all__ = ["AdaLoRARankHandler"]
