"""Processes and their group: one entry point serves every launcher.

``torchrun``/``deepspeed`` (RANK, WORLD_SIZE, LOCAL_RANK), Slurm and submitit (SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID), or a plain single process. Collectives that the objectives need (a mean over every rank's rows)
live here too.
"""

from __future__ import annotations

import os
import socket
import warnings

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for this process: from torchrun or the deepspeed launcher (already
    set), a submitit job (Hydra's Slurm and local launchers), a bare ``srun``, or a single process."""
    if "RANK" in os.environ:
        return {}
    if "SUBMITIT_FOLDER" in os.environ:
        import submitit

        job = submitit.JobEnvironment()
        return {
            "RANK": str(job.global_rank),
            "WORLD_SIZE": str(job.num_tasks),
            "LOCAL_RANK": str(job.local_rank),
            "LOCAL_WORLD_SIZE": str(max(1, job.num_tasks // max(1, job.num_nodes))),
            "MASTER_ADDR": job.hostnames[0] if job.hostnames else "127.0.0.1",
            "MASTER_PORT": str(20000 + int(str(job.job_id).split("_")[0]) % 20000),
        }
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", "127.0.0.1"))
        return {
            "RANK": os.environ["SLURM_PROCID"],
            "WORLD_SIZE": os.environ["SLURM_NTASKS"],
            "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", nodes.split(",")[0].split("[")[0]),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)),
        }
    return {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }


def launched_rank() -> int:
    """This process's rank in its launch (0 when run directly), before any process group exists."""
    return int(os.environ.get("RANK") or launch_env().get("RANK", "0"))


def launched_world_size() -> int:
    """How many processes the launcher started for this run (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE") or launch_env().get("WORLD_SIZE", "1"))


def agree_on_run_time() -> None:
    """Give every rank of a multi-process launch rank 0's start time, so Hydra's ``${run_time:}`` run dirs agree.

    Called before Hydra composes the config; starts the process group early (gloo, or nccl on GPUs).
    """
    import time

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "TRUSTREGION_RUN_TIME" in os.environ:
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    box = [time.time()]
    dist.broadcast_object_list(box, src=0)
    os.environ["TRUSTREGION_RUN_TIME"] = repr(box[0])


def init_distributed(backend: str | None, device: str, num_threads: int | None) -> None:
    """Start the process group once, from whichever launcher started us: ``backend`` (null: nccl on GPUs, gloo on
    CPU), ``device`` (the trainer's: auto, cpu, cuda), ``num_threads`` (the trainer's; null: split the cores)."""
    import deepspeed

    # DeepSpeed 0.19 calls collectives that torch 2.13 marks deprecated, once per step per rank.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", message=".*is deprecated. Please use `torch.distributed")
    os.environ.update(launch_env())
    local_world = int(
        os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", os.environ["WORLD_SIZE"]))
    )
    if "OMP_NUM_THREADS" not in os.environ and not num_threads:
        # The deepspeed launcher leaves OMP_NUM_THREADS unset: ranks would oversubscribe the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    cuda = torch.cuda.is_available() and device != "cpu"
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        # Skip compiling DeepSpeed's shared-memory comm op on CPU (about 30 s on a fresh machine).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def shutdown() -> None:
    """Leave the process group cleanly (gloo aborts the process at exit otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _AllGather(torch.autograd.Function):
    """Every rank's equal-length tensor concatenated in rank order; backward: the sum over ranks of the incoming
    gradients, this rank's slice of it."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), t.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_ranks_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (equal lengths: one micro-batch each), concatenated in rank order. Differentiable like
    ``all_ranks_mean``: each rank's elements get the gradient of every rank's loss (the engine's averaging divides)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return _AllGather.apply(t)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_ranks_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over every rank's elements: one all-reduce of (sum, count). Differentiable: each rank's
    elements get the gradient of every rank's loss (which the engine's gradient averaging then divides)."""
    local = torch.stack([t.sum(), torch.tensor(float(t.numel()), dtype=t.dtype, device=t.device)])
    if torch.is_grad_enabled() and t.requires_grad:
        total = _AllReduceSum.apply(local)
    else:
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total[0] / total[1]
