"""Every rank ends an allocation step with rank 0's decision, even when their importance scores disagree.

Two gloo processes hold the same toy AdaLoRA encoder but deliberately different gradients (what a
non-deterministic reduction or a tie could produce in real DDP); after the handler's masking step
both hold rank 0's masks, Lambdas, rank pattern and allocator statistics.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from scripts.model.adapters import add_adalora
from scripts.training.adalora_handler import AdaLoRARankHandler, RankAllocationState


def _toy_network() -> nn.Module:
    torch.manual_seed(0)  # identical weights on both ranks, as DDP would make them
    encoder = nn.Module()
    encoder.blocks = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.attn = nn.Module()
        block.attn.qkv = nn.Linear(8, 24)
        encoder.blocks.append(block)
    network = nn.Module()
    network.encoder = encoder
    tuner = add_adalora(encoder, init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2, delta_t=1, lambda_init=0.1)
    object.__setattr__(network, "adalora_tuner", tuner)
    return network


def _allocate_once(rank: int, with_sync: bool) -> list:
    network = _toy_network()
    handler = AdaLoRARankHandler(RankAllocationState(network))
    if not with_sync:
        handler._share_decision_of_rank0 = lambda: None
    torch.manual_seed(100 + rank)  # the disagreement: each rank sees its own gradients
    for name, param in network.named_parameters():
        param.grad = torch.randn_like(param) if "lora_" in name else None
    handler.iteration_completed(SimpleNamespace(state=SimpleNamespace(iteration=2, epoch=1, epoch_length=10)))
    tuner = network.adalora_tuner
    mine = {"pattern": tuner.peft_config["default"].rank_pattern,
            "lambdas": [p.detach().clone() for n, p in network.named_parameters() if "lora_E" in n],
            "scores": {k: v.clone() for k, v in tuner.rankallocator.exp_avg_ipt.items()}}
    gathered: list = [None, None]
    dist.all_gather_object(gathered, mine)
    return gathered


def _rank_main(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    results = {"unsynced": _allocate_once(rank, with_sync=False), "synced": _allocate_once(rank, with_sync=True)}
    if rank == 0:
        torch.save(results, f"{tmp}/results.pt")
    dist.destroy_process_group()


def test_ranks_adopt_rank0s_allocation_decision(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    unsynced, synced = results["unsynced"], results["synced"]
    assert unsynced[0]["pattern"] != unsynced[1]["pattern"]  # the scenario is real: left alone, ranks disagree

    assert synced[0]["pattern"] == synced[1]["pattern"]
    assert sum(sum(mask) for mask in synced[0]["pattern"].values()) < 4 * 2  # the budget did shrink at this step
    assert all(torch.equal(a, b) for a, b in zip(synced[0]["lambdas"], synced[1]["lambdas"]))
    assert synced[0]["scores"].keys() == synced[1]["scores"].keys()
    assert all(torch.equal(synced[0]["scores"][k], synced[1]["scores"][k]) for k in synced[0]["scores"])
