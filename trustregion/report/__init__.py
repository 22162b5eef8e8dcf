"""Sweep report: moving vs frozen reference in gold reward at matched KL (else held-out preference metrics), over seeds.

    python -m trustregion.report runs=[outputs/sweep_toy/<date>/<time>]    # sweep dirs, run dirs or globs
    python -m trustregion.report compare=[RUN_FROZEN,RUN_TR] out=DIR        # two runs side by side

A *family* is the runs of one identity but the seed (``training.identity``: every result-changing setting); per
family, the mean over seeds with a 95 % t-interval (n - 1 degrees of freedom; none with one seed). Trust-Region
families are compared with their frozen baseline *paired by seed*, at the KL where the frozen runs peak on average
and in peak gold: ``better``/``worse`` when the paired interval excludes 0, ``identical`` when every seed gives
exactly 0, else ``within noise``. Writes ``report.md``, ``report.json``, ``bands.png``, ``gold_vs_kl.png`` and,
where a fixed (alpha, tau) rule has a frozen family to pair with, ``heatmap.png`` and ``heatmap_peak.png``; the
same files go to wandb as an artifact (offline unless asked). Without a gold reward (no generation evaluations) it
says why in one line and reports each family's held-out preference metrics instead (report.md and report.json).

The modules: ``runs`` (a run dir read: identity, evaluations, readings along its KL path), ``families`` (runs
grouped by identity: duplicates, labels split), ``statistics`` (intervals and verdicts), ``study`` (the paired
comparisons), ``rendering`` (tables whose columns are data; report.md and report.json), ``sections`` (what the gold
and the preference-only reports show), ``plots``, ``wandb_artifact``, ``sweep`` (the sweep report written),
``compare`` (two runs side by side) and ``cli`` (the Hydra entry point).
"""
