"""torchrun worker for tests/test_logps.py: response_logps on a ZeRO-3 partitioned tiny Llama (2 ranks, gloo, CPU).

Prints one JSON line from rank 0: whether the head weight was seen as partitioned, and the largest difference
from the same model's log-probs before partitioning (policy with the engine, reference without grad).
"""

import json
import sys

import torch

sys.path.insert(0, ".")


def main() -> None:
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    torch.set_num_threads(1)
    from tests.test_logps import VOCAB, pair_batch, tiny
    from trustregion.logps import _zero3_partitioned, response_logps

    model = tiny("llama-untied")
    batch = pair_batch(VOCAB["llama-untied"])
    with torch.no_grad():
        want, _ = response_logps(model, batch)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    engine = deepspeed.initialize(model=model, config=config)[0]
    partitioned = _zero3_partitioned(engine.module.get_output_embeddings().weight)
    with torch.no_grad():
        got_module, _ = response_logps(engine.module, batch)
        got_engine, _ = response_logps(engine, batch)
    if torch.distributed.get_rank() == 0:
        print(json.dumps({"partitioned": partitioned,
                          "diff_module": (got_module - want).abs().max().item(),
                          "diff_engine": (got_engine - want).abs().max().item()}))


if __name__ == "__main__":
    main()
