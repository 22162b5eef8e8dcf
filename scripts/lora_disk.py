"""What a LoRA run with a moving `exact` reference puts on disk at SmolLM2-135M's shape (random weights, fp32; no
model package needed): the policy's part of a checkpoint (adapters alone vs the whole state dict, as before this
change), the reference's dense deltas, Adam's moments, and the exported reference (rank, size, seconds).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lora_disk.py [--updates 10] [--out /tmp/lora_disk]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trustregion.config import PeftConfig  # noqa: E402
from trustregion.models.lora import policy_state, wrap_policy  # noqa: E402
from trustregion.reference.adapter import AdapterApplier, build_reference  # noqa: E402

MIB = 2**20


def saved_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10, help="soft updates (alpha 0.3) of the reference")
    parser.add_argument("--out", default="/tmp/lora_disk", help="where the reference adapter is exported")
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    peft = OmegaConf.structured(PeftConfig(name="lora", rank=8, alpha=16.0, reference="exact"))
    policy = wrap_policy(LlamaForCausalLM(shape), peft)
    reference = build_reference(policy, peft, moving=True)
    applier = AdapterApplier(reference)
    noise = torch.Generator().manual_seed(0)
    for _ in range(args.updates):  # the adapters move between updates, as training moves them
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.add_(0.01 * torch.randn(p.shape, generator=noise))
        applier.apply(0.3)
    adam = 8 * sum(p.numel() for p in policy.parameters() if p.requires_grad)
    whole, adapters = saved_bytes(policy.state_dict()), saved_bytes(policy_state(policy))
    deltas = saved_bytes(reference.state_dict())
    print(f"policy in a checkpoint: {adapters / MIB:.1f} MiB (adapters) vs {whole / MIB:.0f} MiB (whole state dict)")
    print(f"reference deltas {deltas / MIB:.0f} MiB, Adam moments {adam / MIB:.1f} MiB")
    clock = time.perf_counter()
    reference.save_pretrained(args.out)
    seconds = time.perf_counter() - clock
    ranks = list(json.loads((Path(args.out) / "adapter_config.json").read_text())["rank_pattern"].values())
    size = (Path(args.out) / "adapter_model.safetensors").stat().st_size / MIB
    print(f"exported reference: ranks {min(ranks)}..{max(ranks)}, {size:.0f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
