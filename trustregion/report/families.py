"""Families: the runs whose result-changing settings are all equal but the seed, from each run's identity.

``training.identity`` is the one source of truth: a family is the runs of one ``RunIdentity.family``, named by its
``label``; its frozen baseline is the frozen family of the same ``RunIdentity.baseline``. Two runs of one family and
one seed are duplicates, counted once; two families of one label (they differ in a setting the label does not show,
such as ``trainer.lr``) are named apart by the settings that differ.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from trustregion.training.identity import RunIdentity

if TYPE_CHECKING:
    from trustregion.report.runs import Run

EVERY_TAU = "trustregion.reference.rules.EveryTau"  # soft and hard: the rules of the (α, τ) heat map


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Family:
    """One ``RunIdentity.family`` (equal and hashed by that key), named by the identity's label plus, where another
    family shares that label, the settings that tell them apart (``split``)."""

    key: str
    identity: RunIdentity = field(compare=False)
    split: str = field(default="", compare=False)

    @classmethod
    def of(cls, identity: RunIdentity) -> Family:
        """The family of a run of ``identity``, named by its label alone."""
        return cls(identity.family, identity)

    @property
    def settings(self) -> dict[str, Any]:
        return self.identity.settings

    @property
    def name(self) -> str:
        """``dpo β=0.1 soft α=0.03 τ=1``, with ``trainer.lr=0.001`` appended where a split needs it."""
        return f"{self.identity.label} {self.split}" if self.split else self.identity.label

    @property
    def frozen(self) -> bool:
        return not self.identity.moves

    @property
    def baseline(self) -> str:
        """The key this family shares with the frozen family it is compared with (``RunIdentity.baseline``)."""
        return self.identity.baseline

    @property
    def method(self) -> str:
        return str(self.settings.get("method.name", "?"))

    @property
    def beta(self) -> float:
        return _number(self.settings.get("method.beta")) or math.nan

    @property
    def fixed(self) -> bool:
        """A fixed (α, τ) rule, soft or hard: the heat map's grid; other moving rules are off it."""
        return not self.frozen and self.settings.get("ref_update._target_") == EVERY_TAU

    @property
    def alpha(self) -> float | None:
        return _number(self.settings.get("ref_update.alpha"))

    @property
    def tau(self) -> int | None:
        tau = _number(self.settings.get("ref_update.tau"))
        return None if tau is None else int(tau)

    @property
    def lora(self) -> str:
        """ "" for full fine-tuning; "LoRA", with a moving reference's mode ("LoRA exact"), as the label shows it."""
        if self.settings.get("peft.name", "none") in ("none", None):
            return ""
        return "LoRA" if self.frozen else f"LoRA {self.settings.get('peft.reference', 'auto')}"

    @property
    def legend(self) -> str:
        """The name without the method and β (figures have a panel per method and β)."""
        return self.name.removeprefix(f"{self.method} β={self.beta:g} ")

    @property
    def rule(self) -> str:
        """The update rule's part of the label (``soft α=0.03 τ=1``, ``frozen``), its split settings too; never the
        method's options (``label_smoothing=0.1``) nor LoRA's."""
        if not self.identity.rule:  # a run from before identity.json kept the rule: what the label leaves
            return self.legend.removeprefix(f"{self.lora} ") if self.lora else self.legend
        return f"{self.identity.rule} {self.split}" if self.split else self.identity.rule

    @property
    def style(self) -> str:
        """Line style in figures: solid for full fine-tuning, dashed for LoRA."""
        return "--" if self.lora else "-"

    @property
    def grid(self) -> str:
        """The key of every setting but the rule's: families with the same one differ only in their update rule."""
        rest = {k: v for k, v in self.settings.items() if not k.startswith("ref_update.")}
        return hashlib.sha1(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def sort_key(self) -> tuple:
        """Method, β, tuning; frozen first, then the fixed rules (hard before soft, by τ and α), then the others."""
        other = "" if self.frozen or self.fixed else self.rule
        return (
            self.method, self.beta, self.lora.split(" ")[0], not self.frozen, other, self.alpha != 1.0,
            self.tau or 0, self.alpha or 0.0, self.name,
        )  # fmt: skip


@dataclass
class Families:
    """The runs grouped into families (ordered; members by seed), and what the grouping decided: the duplicates
    left out (the run kept, then the runs dropped) and the labels split (the label, then the keys that split it)."""

    members: dict[Family, list[Run]]
    duplicates: list[tuple[Run, list[Run]]]
    splits: list[tuple[str, list[str]]]


def _latest(runs: list[Run]) -> Run:
    """Of runs of one family and seed, the one to count: a finished one before a partial one, then the later."""
    return max(runs, key=lambda r: (r.finished, r.updated, str(r.path)))


def _split_keys(families: list[Family]) -> list[str]:
    """The settings in which families of one label differ (``RunIdentity.differences``, every pair)."""
    keys = set()
    for i, a in enumerate(families):
        for b in families[i + 1 :]:
            keys |= {d.split("=", 1)[0] for d in a.identity.differences(b.identity)}
    return sorted(keys)


def group(runs: list[Run]) -> Families:
    """Group ``runs`` by ``RunIdentity.family``; count one run per family and seed; name apart the families that share
    a label. Sets each run's ``family``."""
    by_key: dict[str, dict[int, list[Run]]] = {}
    for r in runs:
        by_key.setdefault(r.identity.family, {}).setdefault(r.seed, []).append(r)
    kept: dict[str, list[Run]] = {}
    duplicates = []
    for key, seeds in by_key.items():
        for same in seeds.values():
            chosen = _latest(same)
            kept.setdefault(key, []).append(chosen)
            if len(same) > 1:
                duplicates.append((chosen, [r for r in same if r is not chosen]))
    families = {key: Family.of(members[0].identity) for key, members in kept.items()}
    by_label: dict[str, list[Family]] = {}
    for fam in families.values():
        by_label.setdefault(fam.identity.label, []).append(fam)
    splits = []
    for label, same in sorted(by_label.items()):
        if len(same) > 1:
            keys = _split_keys(same)
            splits.append((label, keys))
            for fam in same:
                text = " ".join(f"{k}={_text(fam.settings.get(k, '-'))}" for k in keys)
                families[fam.key] = replace(fam, split=text)
    for key, fam in families.items():
        for r in [r for same in by_key[key].values() for r in same]:
            r.family = fam
    ordered = sorted(families.values(), key=Family.sort_key)
    members = {fam: sorted(kept[fam.key], key=lambda r: r.seed) for fam in ordered}
    duplicates.sort(key=lambda d: str(d[0].path))
    return Families(members, duplicates, splits)


def baselines(families: list[Family]) -> dict[str, Family]:
    """The frozen family of each baseline key (where several frozen families share one, e.g. LoRA runs of different
    ``peft.reference``, which a frozen reference ignores: the first in order)."""
    out: dict[str, Family] = {}
    for fam in families:
        if fam.frozen:
            out.setdefault(fam.baseline, fam)
    return out
