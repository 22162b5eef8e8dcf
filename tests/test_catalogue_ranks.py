"""The catalogue's batch-level terms across processes: AOT's sort over every rank's pairs, the SFT term's token mean
and BCO's reward mean give two ranks the loss and gradients of one process on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trustregion.engines.launch import all_ranks_gather, all_ranks_mean
from trustregion.objectives.pair_losses import LossOptions, RunningMean, combined_loss, pair_terms

PAIRS = 4  # per rank
LOSSES = [["aot"], ["aot_unpaired"], ["sft"], ["bco_pair"], ["sigmoid", "bco_pair", "sft"]]


def data() -> list[torch.Tensor]:
    """Policy and reference log-probs [2, pairs] of both ranks' pairs, and response token counts."""
    g = torch.Generator().manual_seed(0)
    policy = -torch.rand(2, 2 * PAIRS, generator=g) * 10
    reference = policy + torch.randn(2, 2 * PAIRS, generator=g)
    counts = torch.randint(1, 9, (2, 2 * PAIRS), generator=g)
    return [policy, reference, counts]


def loss_and_grad(types: list[str], tensors: list[torch.Tensor], gather, mean) -> tuple[torch.Tensor, torch.Tensor]:
    policy = tensors[0].clone().requires_grad_()
    terms = pair_terms(policy, tensors[1], tensors[2], policy[0], "reverse_kl", 0.5)
    rewards = 0.5 * torch.cat([terms.chosen_logratios, terms.rejected_logratios]).detach()
    delta = RunningMean().update(mean(rewards))
    options = LossOptions(beta=0.5, label_smoothing=0.1, bco_delta=delta, gather=gather, batch_mean=mean)
    loss = combined_loss(terms, options, types, [1.0] * len(types))
    loss.backward()
    return loss.detach(), policy.grad


def rank_main(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for i, types in enumerate(LOSSES):
            mine = [t[:, rank * PAIRS : (rank + 1) * PAIRS] for t in data()]
            loss, grad = loss_and_grad(types, mine, all_ranks_gather, all_ranks_mean)
            box = [None, None]  # DeepSpeed averages the ranks' gradients; the loss is the ranks' mean
            dist.all_gather_object(box, (loss, grad))
            if rank == 0:
                out[i] = ((box[0][0] + box[1][0]) / 2, torch.cat([box[0][1], box[1][1]], dim=1) / 2)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(rank_main, args=(port, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.parametrize("index", range(len(LOSSES)), ids=["+".join(t) for t in LOSSES])
def test_two_ranks_get_the_loss_and_gradients_of_one_process(two_ranks, index):
    loss, grad = loss_and_grad(LOSSES[index], data(), lambda t: t, lambda t: t.mean())
    torch.testing.assert_close(two_ranks[index][0], loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(two_ranks[index][1], grad, atol=1e-6, rtol=0)
    assert grad.abs().sum() > 0
