"""LoRA reference memory per adapted module and the peft.reference=auto rule, for Pythia shapes (no weights)."""

# Memory of the LoRA reference per adapted module and the auto rule, for Pythia-410M / 2.8B shapes (no weights needed).
for name, h, L, ff, vocab in [("pythia-410m", 1024, 24, 4096, 50304), ("pythia-2.8b", 2560, 32, 10240, 50304)]:
    shapes = {"query_key_value": (3 * h, h), "dense": (h, h), "dense_h_to_4h": (ff, h), "dense_4h_to_h": (h, ff)}
    base = 2 * vocab * h + L * sum(o * i for o, i in shapes.values())  # embeddings + linears (norms, biases ~0)
    for targets in (["query_key_value"], list(shapes)):
        dense = L * sum(shapes[t][0] * shapes[t][1] for t in targets)
        fac = L * sum(8 * (shapes[t][0] + shapes[t][1]) for t in targets)
        print(
            f"{name} {'+'.join(targets) if len(targets) == 1 else 'all-linear'}: exact delta {dense / base:.1%} of the base "
            f"({4 * dense / 2**20:.0f} MiB fp32); factors r=8 {4 * fac / 2**20:.1f} MiB; auto -> "
            f"{'exact' if dense <= 0.15 * base else 'factors'}"
        )
