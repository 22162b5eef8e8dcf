"""Model FLOPs of a preference step, from its token counts, and the machine's matmul peak to divide them by (MFU).

The convention of Kaplan et al. and PaLM's MFU: 2·N FLOPs per token forward and 4·N backward through the body's
N weights (attention's quadratic term left out); the LM head 2·d·V per *scored* position forward (the chunked
head scores response positions only), ×3 with its backward; the reference adds a forward where it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
from functools import cache
from pathlib import Path

import torch


def flops_per_token(total_params: int, config, reference_forward: bool) -> tuple[float, float]:
    """(FLOPs per sequence token, FLOPs per scored token) of one training step; ``config`` the model's HF config."""
    hidden, vocab = int(config.hidden_size), int(config.vocab_size)
    embeddings = vocab * hidden * (1 if config.tie_word_embeddings else 2)
    body = max(0, total_params - embeddings)
    passes = 3 + (1 if reference_forward else 0)  # forward + backward (2x) for the policy, a forward for the reference
    return 2.0 * body * passes, 2.0 * hidden * vocab * passes


PEAK_STORE = Path("~/.cache/trustregion/matmul_peak.json").expanduser()


def _machine(device: str, dtype: torch.dtype) -> str:
    """What a matmul peak belongs to: this host, its chip (CPU model, its vector extension and torch's thread count,
    or the GPU's name), the dtype and torch's version."""
    if device.startswith("cuda"):
        chip = torch.cuda.get_device_name(torch.device(device))
    else:
        model = platform.processor()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
            model = names[0] if names else model
        chip = f"{model} {torch.backends.cpu.get_cpu_capability()} threads={torch.get_num_threads()}"
    return f"{socket.gethostname()} | {chip} | {dtype} | torch {torch.__version__}"


def _measure(device: str, dtype: torch.dtype) -> float:
    sizes = (2048, 4096, 8192) if device.startswith("cuda") else (256, 512, 1024, 2048)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        slowest = 0.0
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            tic = time.perf_counter()
            a @ b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tic
            best, slowest = max(best, 2.0 * n**3 / seconds), max(slowest, seconds)
        if slowest > 0.1:
            break
    return best


def _stored(store: Path) -> dict[str, float]:
    try:
        peaks = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return peaks if isinstance(peaks, dict) else {}


@cache
def matmul_peak(device: str, dtype: torch.dtype, store: Path = PEAK_STORE) -> float:
    """This machine's practical peak: the best FLOP/s of square matmuls in ``dtype`` on ``device`` over a few sizes
    (best of 3 each), growing the size while one product takes under 0.1 s. Measured, not read from a spec sheet (a
    CPU without native bf16, AVX2 only, emulates it, slowly), once per machine: the probe costs about a second of
    compute, so it is kept in ``store`` keyed by host, chip, threads, dtype and torch version, and read by later runs
    (delete the file to measure again, e.g. after a first run on a busy machine)."""
    machine = _machine(device, dtype)
    peaks = _stored(store)
    if isinstance(peaks.get(machine), float):
        return peaks[machine]
    peak = _measure(device, dtype)
    tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
    try:  # a cache: a store that cannot be written costs the next run the probe again, nothing else
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({**_stored(store), machine: peak}, indent=1))
        os.replace(tmp, store)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return peak
