"""KTO's reference point z across processes: the mean over every rank's micro-batch, with gradients."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trustregion.engines.launch import all_ranks_mean
from trustregion.objectives.losses import kto_loss, kto_unpaired_loss

BATCH = 4  # per rank


def data(seed: int = 0) -> list[torch.Tensor]:
    """Policy/reference log-probs of chosen, rejected, mismatched (log-ratios around +0.5, so z > 0), and labels."""
    g = torch.Generator().manual_seed(seed)
    logps = [torch.randn(2 * BATCH, generator=g) + shift for shift in (0.5, 0.0, 0.7, 0.0, 0.6, 0.0)]
    return [*logps, torch.arange(2 * BATCH) % 3 != 0]


def losses_and_grads(point: str, tensors: list[torch.Tensor], batch_mean) -> tuple[torch.Tensor, list[torch.Tensor]]:
    pc, rc, pr, rr, pm, rm = (t.clone().requires_grad_(i % 2 == 0) for i, t in enumerate(tensors[:6]))
    good = tensors[6]
    losses, _, _ = kto_loss(
        pc,
        pr,
        rc,
        rr,
        beta=0.5,
        reference_point=point,
        policy_mismatched_logps=pm,
        reference_mismatched_logps=rm,
        batch_mean=batch_mean,
    )
    unpaired, _ = kto_unpaired_loss(
        pc, rc, good, beta=0.5, policy_mismatched_logps=pm, reference_mismatched_logps=rm, batch_mean=batch_mean
    )
    loss = losses.mean() + unpaired.mean()
    loss.backward()
    return loss.detach(), [pc.grad, pr.grad]


def rank_main(rank: int, port: int, point: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = [t[rank * BATCH : (rank + 1) * BATCH] for t in data()]
        loss, grads = losses_and_grads(point, mine, all_ranks_mean)
        # what DeepSpeed does with the ranks' gradients: their mean; the global loss is the mean of the ranks'
        box = [None, None]
        dist.all_gather_object(box, (loss, grads))
        if rank == 0:
            out["loss"] = (box[0][0] + box[1][0]) / 2
            out["grads"] = [torch.cat([box[0][1][i], box[1][1][i]]) / 2 for i in range(2)]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("point", ["paired", "mismatched"])
def test_two_ranks_get_the_loss_and_gradients_of_one_process(point):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(rank_main, args=(port, point, out), nprocs=2, join=True)
    loss, grads = losses_and_grads(point, data(), lambda t: t.mean())
    torch.testing.assert_close(out["loss"], loss, atol=1e-6, rtol=0)
    for two, one in zip(out["grads"], grads):
        torch.testing.assert_close(two, one, atol=1e-6, rtol=0)
