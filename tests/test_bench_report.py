"""The bench's real-vocabulary plan and report: a precision per row, MFU columns, goals met or not (no timing)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from benchkit.plans import REAL_PRECISIONS, real_label, split_label  # noqa: E402
from benchkit.render import render_real  # noqa: E402

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


def run(s_per_step: float, tokens: int = 800, mfu: float | None = None, peak_gflops: float = 50.0) -> dict:
    """One worker result as the real-vocabulary workers return it; ours carry the ThroughputHook's numbers."""
    out = {"step_s": [s_per_step], "tokens_per_step": tokens, "between_steps_mb": 1000.0}
    out.update(step_peak_above_mb=500.0, peak_rss_mb=2000.0, params=42_000_000)
    if mfu is not None:
        out.update(mfu=mfu, tflops=mfu * peak_gflops / 1e3)
    return out


def test_labels_round_trip_and_fp32_keeps_the_plain_name():
    assert real_label("soft", "fp32") == "soft"
    for precision in REAL_PRECISIONS:
        for config in ("soft", "soft, full logits", "TRL synced"):
            assert split_label(real_label(config, precision)) == (config, precision)


def test_report_has_bf16_rows_mfu_and_a_measured_precision_miss():
    key = "smollm2-135m-4l/hh"
    runs = {
        f"{key}/soft": [run(2.0, mfu=0.5)],
        f"{key}/TRL synced": [run(6.0)],
        f"{key}/soft, bf16-mixed": [run(20.0, mfu=2.0, peak_gflops=1.0)],
        f"{key}/TRL synced, bf16-mixed": [run(50.0)],
    }
    text = "\n".join(render_real({"runs": runs, "head": {}}))
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| smollm2-135m-4l, hh | ")}
    assert set(rows) == {"soft", "TRL synced", "soft, bf16-mixed", "TRL synced, bf16-mixed"}
    assert "| 0.500 |" in rows["soft"] and "| 2.000 |" in rows["soft, bf16-mixed"]  # MFU as the rows logged it
    assert "| 3.00 (3.00–3.00) |" in rows["soft"]  # vs TRL synced in fp32
    assert "| 2.50 (2.50–2.50) |" in rows["soft, bf16-mixed"]  # vs TRL synced in bf16, not in fp32
    assert "fp32 50.0 GFLOP/s, bf16-mixed 1.0 GFLOP/s" in text
    assert "over the fp32 peak: smollm2-135m-4l/hh soft, bf16-mixed 0.040" in text  # 2.0 GFLOP/s ÷ 50
    goals = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if "≥" in line or "≤" in line}
    assert "met |" in goals["whole step, ours soft ≥ 2.5× TRL synced's rate (smollm2-135m-4l, hh)"]
    assert (
        "| met |"
        in goals["whole step, ours soft, bf16-mixed ≥ 2.5× TRL synced, bf16-mixed's rate (smollm2-135m-4l, hh)"]
    )
    miss = goals["whole step, ours soft, bf16-mixed ≥ 1.8× ours soft's (fp32) rate"]
    assert "| 0.10 (0.10–0.10) | NOT met: no native bf16 matmul on this machine (measured peak 1.0 GFLOP/s" in miss
    emulated = "ours soft, bf16-mixed: MFU ≥ 0.5 of the measured bf16 matmul peak (met only against an emulated peak"
    assert "| met |" in next(line for name, line in goals.items() if name.startswith(emulated))
    assert "peak RSS ≤ 0.75× ours soft's (fp32)" in "".join(goals)
