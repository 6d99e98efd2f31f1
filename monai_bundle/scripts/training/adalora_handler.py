"""Ignite handler that drives AdaLoRA's rank allocator, records the rank pattern and announces the budget's phase."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.nn as nn
from ignite.engine import Engine, EventEnum, Events

from ..atomic import atomic_write_text
from ..model.adapters import per_layer_prune, rank_pattern
from .distributed import broadcast_object, broadcast_tensors, is_distributed, is_main_process, unwrap


class RankBudgetEvents(EventEnum):
    """Fired by :class:`AdaLoRARankHandler` at ``EPOCH_COMPLETED``, before validation, for model selection.

    ``BUDGET_MOVING``: the rank budget has not reached its target yet (a model now has more rank than it will
    ship with); ``BUDGET_FINAL``: once, at the first epoch whose budget is final.
    """

    BUDGET_MOVING = "adalora_budget_moving"
    BUDGET_FINAL = "adalora_budget_final"


class RankAllocationState:
    """What AdaLoRA's rank allocation has done so far, checkpointable: peft's allocator statistics and decision,
    whether the paper's one-off pruning happened, whether the final budget was announced, the per-epoch history.

    A config entry of its own, so the resumable checkpoint names it by id while the handler that drives it sits
    in the trainer's handler list. ``network`` without ``adalora_tuner`` (set by ``build_network``) holds nothing.
    """

    def __init__(self, network: nn.Module) -> None:
        self.tuner = getattr(unwrap(network), "adalora_tuner", None)
        self.pruned = False
        self.final_seen = False
        self.history: list[dict[str, Any]] = []

    @property
    def allocation(self) -> dict[str, list[bool]] | None:
        """peft's current decision: the kept singular values of each matrix (None before the first one)."""
        return self.tuner.peft_config["default"].rank_pattern if self.tuner is not None else None

    def state_dict(self) -> dict[str, Any]:
        if self.tuner is None:
            return {}
        allocator = self.tuner.rankallocator
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": self.allocation,
            "pruned": self.pruned,
            "final_seen": self.final_seen,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tuner is None or not state:
            return
        allocator = self.tuner.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (dict(state[k]) for k in ("ipt", "exp_avg_ipt", "exp_avg_unc"))
        self.tuner.peft_config["default"].rank_pattern = state.get("rank_pattern")
        self.pruned = bool(state.get("pruned", False))
        self.final_seen = bool(state.get("final_seen", False))
        self.history = list(state.get("history", []))


class AdaLoRARankHandler:
    """Calls the rank allocator after every optimiser step and logs the per-layer ranks each epoch.

    Fires on ``ITERATION_COMPLETED`` (gradients are still present: MONAI's trainer zeroes them at the
    start of the next iteration) and on ``EPOCH_COMPLETED`` (rank pattern -> log, ``engine.state.metrics
    ["adalora_budget"]`` for TensorBoard, and ``rank_pattern.json`` in ``output_dir``), where it also fires
    :class:`RankBudgetEvents` (``scripts.training.selection_state`` listens). Attach it before the
    ``ValidationHandler`` so the epoch that finalises the budget is validated after it.

    Args:
        state: the :class:`RankAllocationState` of the network whose ``adalora_tuner`` is driven; a network
            without one makes this handler a no-op, so configs can always attach it.
        mode: ``"global"`` — peft's AdaLoRA: one budget over all matrices, cubic schedule;
            ``"per_layer"`` — the paper: importance tracked until ``prune_epoch``, then every matrix
            pruned to exactly ``target_r`` once; ``"frozen"`` — stage 2: ranks fixed, only logged.
    """

    def __init__(self, state: RankAllocationState, mode: str = "global", prune_epoch: int | None = None,
                 target_r: int | None = None, output_dir: str | None = None, log_name: str = "adaqat.adalora") -> None:
        if mode not in ("global", "per_layer", "frozen"):
            raise ValueError(f"mode must be 'global', 'per_layer' or 'frozen', got {mode!r}")
        if mode == "per_layer" and (prune_epoch is None or target_r is None):
            raise ValueError("mode 'per_layer' needs prune_epoch and target_r")
        self.state = state
        self.tuner = state.tuner
        self.mode = mode
        self.prune_epoch = prune_epoch
        self.target_r = target_r
        self.output_dir = Path(output_dir) if output_dir else None
        self.logger = logging.getLogger(log_name)

    def attach(self, engine: Engine) -> None:
        if self.tuner is None:
            return
        engine.register_events(*RankBudgetEvents)
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
        if not self.state.pruned:
            allocator.update_ipt(self.tuner.model)
            if engine.state.epoch >= self.prune_epoch and engine.state.iteration % engine.state.epoch_length == 0:
                per_layer_prune(self.tuner, self.target_r)
                self.state.pruned = True
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
            return self.state.pruned
        config = self.tuner.peft_config["default"]
        return engine.state.iteration >= config.total_step - config.tfinal

    def _announce_budget(self, engine: Engine) -> None:
        if not self.budget_is_final(engine):
            engine.fire_event(RankBudgetEvents.BUDGET_MOVING)
        elif not self.state.final_seen:
            self.state.final_seen = True
            engine.fire_event(RankBudgetEvents.BUDGET_FINAL)

    def epoch_completed(self, engine: Engine) -> None:
        self._announce_budget(engine)
        ranks = rank_pattern(self.tuner.model, self.state.allocation)
        budget = sum(ranks.values())
        engine.state.metrics["adalora_budget"] = float(budget)
        self.state.history.append({"epoch": engine.state.epoch, "iteration": engine.state.iteration, "budget": budget,
                                   "ranks": ranks})
        self.logger.info("epoch %d: AdaLoRA rank budget %d over %d matrices: %s", engine.state.epoch, budget, len(ranks),
                         " ".join(f"{name.split('blocks.')[-1]}={r}" for name, r in ranks.items()))
        if self.output_dir is not None and is_main_process():
            atomic_write_text(self.output_dir / "rank_pattern.json", json.dumps({"mode": self.mode, "history": self.state.history}, indent=1))


__all__ = ["AdaLoRARankHandler", "RankAllocationState", "RankBudgetEvents"]
