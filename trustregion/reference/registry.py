"""The package's update rules by the name of their preset (``ref_update=<name>``), for schema registration."""

from __future__ import annotations

from trustregion.reference.kl_budget import KLBudget
from trustregion.reference.rules import EveryTau, Frozen, Rule
from trustregion.reference.schedule import AlphaSchedule

RULES: dict[str, type[Rule]] = {
    "none": Frozen,
    "soft": EveryTau,
    "hard": EveryTau,
    "kl_budget": KLBudget,
    "schedule": AlphaSchedule,
}
