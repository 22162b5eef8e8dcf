"""torchrun worker for tests/test_logps.py: response_logps on a ZeRO-3 partitioned tiny Llama (2 ranks, gloo, CPU).

The ranks get batches with different response token counts (so different chunk counts). Rank 0 prints one
JSON line: whether the head weight was partitioned, and the largest differences from one process without
DeepSpeed: the reference's log-probs (no grad) and the gradients of a DPO loss (averaged over the ranks).
"""

import copy
import json
import sys

import torch

sys.path.insert(0, ".")
CHUNK = 8


def rank_batch(rank: int):
    from tests.test_logps import VOCAB, pair_batch

    batch = pair_batch(VOCAB["llama-untied"])
    if rank == 1:  # 2 of the 3 pairs: fewer response tokens, fewer chunks
        batch = {k: v[[1, 2, 4, 5]] if v.shape[0] == 6 else v for k, v in batch.items()}
    return batch


def dpo_loss_of(model, batch):
    from trustregion.models.logps import response_logps
    from trustregion.objectives.losses import dpo_loss

    logps, _ = response_logps(model, batch, chunk_tokens=CHUNK)
    pol = logps.view(2, -1)
    ref = torch.linspace(-80.0, -20.0, pol.numel()).view(2, -1)
    return dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.5)[0].mean()


def main() -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    torch.set_num_threads(1)
    from tests.test_logps import tiny
    from trustregion.models.logps import _zero3_partitioned, response_logps

    rank = torch.distributed.get_rank()
    model = tiny("llama-untied")
    plain = copy.deepcopy(model)
    with torch.no_grad():
        want_logps, _ = response_logps(plain, rank_batch(rank), chunk_tokens=CHUNK)
    grads = []
    for r in (0, 1):
        plain.zero_grad()
        dpo_loss_of(plain, rank_batch(r)).backward()
        grads.append({n: p.grad.clone() for n, p in plain.named_parameters()})
    want_grads = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}

    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    engine = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=config)[0]
    partitioned = _zero3_partitioned(engine.module.get_output_embeddings().weight)
    with torch.no_grad():
        got_logps, _ = response_logps(engine.module, rank_batch(rank), chunk_tokens=CHUNK)
    engine.backward(dpo_loss_of(engine.module, rank_batch(rank)))
    grad_diff = max(
        (safe_get_full_grad(p) - want_grads[n]).abs().max().item() for n, p in engine.module.named_parameters()
    )
    if rank == 0:
        print(
            json.dumps(
                {
                    "partitioned": partitioned,
                    "logps_diff": (got_logps - want_logps).abs().max().item(),
                    "grad_diff": grad_diff,
                }
            )
        )


if __name__ == "__main__":
    try:
        main()
    finally:
        # gloo aborts the process at exit ("terminate called without an active exception") if the group is left open.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
