"""Model FLOPs of a preference step, from its token counts, and the machine's matmul peak to divide them by (MFU).

The convention of Kaplan et al. and PaLM's MFU: 2·N FLOPs per token forward and 4·N backward through the body's
N weights (attention's quadratic term left out); the LM head 2·d·V per *scored* position forward (the chunked
head scores response positions only), ×3 with its backward; the reference adds a forward where it runs.
"""

from __future__ import annotations

import time
from functools import cache

import torch


def flops_per_token(total_params: int, config, reference_forward: bool) -> tuple[float, float]:
    """(FLOPs per sequence token, FLOPs per scored token) of one training step; ``config`` the model's HF config."""
    hidden, vocab = int(config.hidden_size), int(config.vocab_size)
    embeddings = vocab * hidden * (1 if config.tie_word_embeddings else 2)
    body = max(0, total_params - embeddings)
    passes = 3 + (1 if reference_forward else 0)  # forward + backward (2x) for the policy, a forward for the reference
    return 2.0 * body * passes, 2.0 * hidden * vocab * passes


@cache
def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """This machine's practical peak: the best FLOP/s of square matmuls in ``dtype`` on ``device`` over a few sizes
    (best of 3 each), growing the size while one product takes under 0.1 s, so the probe costs well under a second.
    Measured, not read from a spec sheet: a CPU without native bf16 (AVX2 only) emulates it, slowly."""
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
