"""Multi-process training under DeepSpeed ZeRO (stages 1-3): process group, engines, sharded reference updates.

One entry point serves every launcher: ``torchrun``/``deepspeed`` (RANK, WORLD_SIZE, LOCAL_RANK), Slurm
and submitit (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), or a plain single process. Under ZeRO-3 the
reference is partitioned like the policy, and the reference update runs on each rank's own shards
(``param.ds_tensor``) with no gather and no communication: both models are partitioned the same way,
so shard i of the reference lines up element for element with shard i of the policy.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from trustregion.engine import make_optimizer
from trustregion.errors import ConfigError
from trustregion.reference import ReferenceUpdater
from trustregion.resharding import reshard, saved_world_size, to_universal


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


def init_distributed(cfg: DictConfig) -> None:
    """Start the process group (gloo on CPU, nccl on GPUs) once, from whichever launcher started us."""
    import deepspeed

    # DeepSpeed 0.19 calls collectives that torch 2.13 marks deprecated, once per step per rank.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", message=".*is deprecated. Please use `torch.distributed")
    os.environ.update(launch_env())
    local_world = int(
        os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", os.environ["WORLD_SIZE"]))
    )
    if "OMP_NUM_THREADS" not in os.environ and not cfg.trainer.num_threads:
        # The deepspeed launcher leaves OMP_NUM_THREADS unset: ranks would oversubscribe the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    cuda = torch.cuda.is_available() and cfg.trainer.device != "cpu"
    backend = cfg.deepspeed.backend or ("nccl" if cuda else "gloo")
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


def deepspeed_config(cfg: DictConfig, world_size: int, train: bool) -> dict:
    """The DeepSpeed config dict for the policy (``train``) or the reference (no optimizer)."""
    ds, t = cfg.deepspeed, cfg.trainer
    zero: dict = {"stage": int(ds.stage)}
    if ds.stage == 3:
        zero["stage3_param_persistence_threshold"] = int(ds.param_persistence_threshold)
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_optimizer and train:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if not train and ds.stage < 3:
        zero = {"stage": 0}
    config = {
        "train_micro_batch_size_per_gpu": int(t.batch_size),
        "gradient_accumulation_steps": int(t.grad_accum),
        "train_batch_size": int(t.batch_size) * int(t.grad_accum) * world_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if t.max_grad_norm is not None:
        config["gradient_clipping"] = float(t.max_grad_norm)
    if ds.bf16 or cfg.model.dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
    elif cfg.model.dtype == "float16":
        config["fp16"] = {"enabled": True}
    return config


def check_config(cfg: DictConfig, world_size: int) -> None:
    """One-line errors for DeepSpeed settings that conflict with the trainer's."""
    ds = cfg.deepspeed
    if ds.stage not in (1, 2, 3):
        raise ConfigError(
            f"deepspeed.stage={ds.stage} is invalid: set deepspeed.stage to 1, 2 or 3 (or deepspeed=none)"
        )
    if ds.offload_params and ds.stage != 3:
        raise ConfigError(
            f"deepspeed.offload_params=true needs ZeRO stage 3 (deepspeed.stage={ds.stage}); set deepspeed=zero3"
        )


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


class DeepSpeedEngine:
    """Policy and reference as DeepSpeed engines: ``trustregion.engine.Engine`` under ZeRO stages 1-3."""

    def __init__(self, cfg: DictConfig, policy, reference, total_steps: int) -> None:
        import deepspeed

        self.cfg = cfg
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        check_config(cfg, self.world_size)
        self.stage = int(cfg.deepspeed.stage)
        cuda = torch.cuda.is_available() and cfg.trainer.device != "cpu"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        optimizer, scheduler = make_optimizer(policy, cfg.trainer, total_steps)
        self.grad_accum = int(cfg.trainer.grad_accum)
        self._micro = 0
        self.policy, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=policy,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, self.world_size, train=True),
        )
        self.reference = self.prepare_frozen(reference) if reference is not None else None

    def prepare_frozen(self, model):
        """A frozen model partitioned like the policy under ZeRO-3 (an inference engine), else replicated."""
        import deepspeed

        model.requires_grad_(False)
        # A view with no weights of its own (the LoRA reference, on the policy's base) has nothing to partition.
        if self.stage == 3 and any(True for _ in model.parameters()):
            engine = deepspeed.initialize(model=model, config=deepspeed_config(self.cfg, self.world_size, train=False))[
                0
            ]
            engine.eval()
            return engine
        return model.to(self.device).eval()

    # --- the reference update -------------------------------------------------------------------
    def updater(self, alpha: float, tau: int | None) -> ReferenceUpdater:
        """Sharded (each rank lerps its own shards) or, with ``ref_update.zero3=gathered``, on whole parameters."""
        policy, reference = self.unwrap("policy"), self.unwrap("reference")
        if self.stage != 3:
            return ReferenceUpdater.for_models(policy, reference, alpha, tau)
        if str(self.cfg.ref_update.zero3.value) == "gathered":
            return GatheredUpdater(policy, reference, alpha, tau)
        pol, ref, persistent = [], [], []
        for p, r in zip(policy.parameters(), reference.parameters()):
            pol.append(p.ds_tensor)
            ref.append(r.ds_tensor)
            if r.ds_persist != p.ds_persist:
                raise ConfigError(
                    "policy and reference disagree on ZeRO-3 persistent parameters; "
                    "set deepspeed.param_persistence_threshold=0"
                )
            if r.ds_persist:
                persistent.append((p, r))
        buffers = [b for b in policy.buffers() if b.is_floating_point()]
        pol += buffers
        ref += [b for b in reference.buffers() if b.is_floating_point()]

        def whole_copies():
            # Persistent parameters stay whole on every rank once gathered, and the forward reads that
            # copy, not the shard; their storage is replaced on gathering, so look it up each time. On one
            # rank the whole copy is a view of the shard, which the update has already mixed.
            return [(p.data, r.data) for p, r in persistent if not _shares_storage(r.data, r.ds_tensor)]

        late = whole_copies if persistent else None
        return ReferenceUpdater(pol, ref, alpha, tau, late, replicated=(len(buffers), self.world_size))

    # --- optimisation -----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by grad_accum; DeepSpeed steps itself at the accumulation boundary.
        self.policy.backward(loss, scale_wrt_gas=False)
        self._micro += 1
        if self._micro % self.grad_accum:
            self.policy.step()

    def step(self) -> torch.Tensor:
        self.policy.step()
        norm = self.policy.get_global_grad_norm()
        return torch.as_tensor(float(norm) if norm is not None else float("nan"))

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        return all_ranks_mean(t)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_path(self, path: Path | None) -> Path:
        box = [str(path) if path is not None else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0])

    def unwrap(self, which: str):
        model = self.policy if which == "policy" else self.reference
        return model.module if isinstance(model, self._ds_engine_type()) else model

    @staticmethod
    def _ds_engine_type() -> type:
        from deepspeed import DeepSpeedEngine as Wrapped

        return Wrapped

    # --- checkpoints: DeepSpeed's own for the policy, each rank's shards for the reference -----------
    def _reference_tensors(self) -> list[torch.Tensor]:
        ref = self.unwrap("reference")
        if ref is None:
            return []
        if self.stage == 3:
            return [p.ds_tensor for p in ref.parameters()] + [p.data for p in ref.parameters() if p.ds_persist]
        return list(ref.state_dict().values())

    def save(self, directory: Path, optimizer: bool = True) -> None:
        if not optimizer:  # validate() refuses trainer.final_optimizer_state=false under ZeRO
            raise ConfigError("a DeepSpeed checkpoint always holds the optimizer state (it has the fp32 weights)")
        self.policy.save_checkpoint(str(directory / "deepspeed"), tag="policy")
        torch.save([t.detach().cpu() for t in self._reference_tensors()], directory / f"reference_rank{self.rank}.pt")
        dist.barrier()

    def load(self, directory: Path) -> None:
        """Restore a checkpoint written at this world size, or re-shard one written at another (``_load_resized``)."""
        saved = saved_world_size(directory / "deepspeed" / "policy")
        if saved and saved != self.world_size:
            return self._load_resized(directory, saved)
        path, _ = self.policy.load_checkpoint(
            str(directory / "deepspeed"), tag="policy", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise ConfigError(f"trainer.resume={directory}: no DeepSpeed policy state in it; pick another checkpoint")
        shard_file = directory / f"reference_rank{self.rank}.pt"
        if not shard_file.exists():
            raise ConfigError(
                f"trainer.resume={directory}: no reference shards for rank {self.rank}; "
                "the checkpoint is incomplete, resume from an earlier one"
            )
        self._restore_reference(torch.load(shard_file, map_location=self.device, weights_only=True))

    def _load_resized(self, directory: Path, saved: int) -> None:
        """The policy and optimizer through a universal checkpoint (converted by rank 0 beside the checkpoint, then
        removed); the reference re-cut from every saved rank's shards."""
        universal = directory.parent / f".universal-{directory.name}"
        failure = [None]
        if self.is_main:
            try:
                to_universal(directory / "deepspeed" / "policy", universal / "policy")
            except Exception as e:  # noqa: BLE001 - reported on every rank as one line below
                failure = [(str(e).strip().splitlines() or [type(e).__name__])[0][:200]]
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise ConfigError(
                f"trainer.resume={directory}: cannot convert its {saved}-rank DeepSpeed state for {self.world_size} "
                f"ranks ({failure[0]}); resume with {saved} ranks"
            )
        config = self.policy._config
        config.load_universal_checkpoint = True
        try:
            path, _ = self.policy.load_checkpoint(
                str(universal), tag="policy", load_optimizer_states=True, load_lr_scheduler_states=True
            )
        finally:
            config.load_universal_checkpoint = False
            dist.barrier()
            if self.is_main:
                shutil.rmtree(universal, ignore_errors=True)
        if path is None:
            raise ConfigError(f"trainer.resume={directory}: no DeepSpeed policy state in it; pick another checkpoint")
        if self.reference is not None:
            per_rank = [
                torch.load(directory / f"reference_rank{r}.pt", map_location=self.device, weights_only=True)
                for r in range(saved)
            ]
            self._restore_reference(self.reshard(per_rank))

    @torch.no_grad()
    def _restore_reference(self, saved: list[torch.Tensor]) -> None:
        # Whole copies of persistent parameters stay empty until the first forward gathers them from the shards.
        pairs = [(mine, s) for mine, s in zip(self._reference_tensors(), saved, strict=True) if mine.numel() > 0]
        if pairs:
            torch._foreach_copy_([mine for mine, _ in pairs], [s for _, s in pairs])

    def reshard(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """This rank's part of tensors laid out like the reference's (each parameter's ZeRO-3 partition, then whole
        tensors), from every saved rank's list: for a resume at another world size."""
        if self.stage != 3:
            return list(per_rank[0])
        numels = [p.ds_numel for p in self.unwrap("reference").parameters()]
        return reshard(per_rank, numels, self.world_size, self.rank)

    def export(self, which: str, directory: Path) -> None:
        """save_pretrained of the whole model from rank 0 (consolidated from the shards under ZeRO-3)."""
        engine = self.policy if which == "policy" else self.reference
        module = self.unwrap(which)
        if self.stage == 3:
            state = engine._zero3_consolidated_16bit_state_dict()
            if self.is_main:
                module.save_pretrained(directory, state_dict=state)
        elif self.is_main:
            module.save_pretrained(directory)
        dist.barrier()


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class GatheredUpdater(ReferenceUpdater):
    """The ZeRO-3 reference update through ``GatheredParameters`` (whole parameters on rank 0): for comparison."""

    def __init__(self, policy, reference, alpha: float, tau: int | None) -> None:
        self.policy_module, self.reference_module = policy, reference
        super().__init__([], [], alpha, tau)

    @torch.no_grad()
    def update(self) -> None:
        import deepspeed

        pol, ref = list(self.policy_module.parameters()), list(self.reference_module.parameters())
        with deepspeed.zero.GatheredParameters(pol, modifier_rank=None):
            with deepspeed.zero.GatheredParameters(ref, modifier_rank=0):
                if dist.get_rank() == 0:
                    torch._foreach_lerp_([r.data for r in ref], [p.data for p in pol], self.alpha)
        self.num_updates += 1

    def distance(self) -> tuple[torch.Tensor, torch.Tensor]:
        diff, norm = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for p, r in zip(self.policy_module.parameters(), self.reference_module.parameters()):
            diff += torch.linalg.vector_norm(r.ds_tensor.float() - p.ds_tensor.float()).double().cpu() ** 2
            norm += torch.linalg.vector_norm(p.ds_tensor.float()).double().cpu() ** 2
        world = dist.get_world_size()  # buffers are whole on every rank: each counted once over the ranks
        for p, r in zip(self.policy_module.buffers(), self.reference_module.buffers()):
            if p.is_floating_point():
                diff += torch.linalg.vector_norm(r.float() - p.float()).double().cpu() ** 2 / world
                norm += torch.linalg.vector_norm(p.float()).double().cpu() ** 2 / world
        return diff, norm
