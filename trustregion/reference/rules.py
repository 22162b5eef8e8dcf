"""When the reference moves and by how much: the update rule that ``ref_update=<name>`` selects.

After every optimizer step the loop asks the rule for that step's α (0: no update); how the mix
θ_ref ← α·θ + (1 − α)·θ_ref is applied (dense, ZeRO-3 shard by shard, LoRA delta) is not the rule's
business (``trustregion.reference.applier``). A rule may keep state (saved in checkpoints) and read
the step's metrics through ``StepStats``, so data-dependent rules fit. Write one as a subclass of
``Rule`` and select it with ``ref_update._target_=<module>.<Class>`` or a YAML that names it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar, Protocol

from omegaconf import DictConfig

from trustregion.config import RefUpdateConfig
from trustregion.errors import ConfigError
from trustregion.schema import check_settings, component_class, in_schema

_SYMBOL = {"alpha": "α=", "tau": "τ="}


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value.value if isinstance(value, Enum) else value)


class StepStats(Protocol):
    """What a rule may read after optimizer step ``step`` (1-based) of a run of ``total_steps``: the step's training
    metrics, the policy's distance from the reference, and the latest evaluation. The first two are collectives (every
    rank must ask the same things in the same order, and only when the rule needs them), so every rank decides alike."""

    step: int
    total_steps: int

    def mean(self, key: str) -> float:
        """The step's mean of training metric ``key`` over every rank's micro-batches, e.g. ``logratio/policy_ref``:
        the per-token log π/π_ref on the batch's (off-policy) responses. One all-reduce and a host sync."""

    def distance(self) -> float:
        """‖θ_ref − θ‖ / ‖θ‖ over every weight of the two models, after this step's optimizer update (before the
        reference's). One all-reduce and a host sync."""

    def evaluation(self, key: str) -> float | None:
        """``key`` of the latest evaluation (e.g. ``eval/kl_ref``, the sampled KL(π‖π_ref)), alike on every rank; None
        before the first evaluation or where the run does not log it. No collective."""


class Rule:
    """A reference-update rule. Override ``alpha``; ``moves = False`` marks a rule that never updates (the reference
    is then frozen, and its log-probs may be cached). Range checks go in ``check`` (raise ``ConfigError``)."""

    config_class: ClassVar[type] = RefUpdateConfig  # the schema of ``ref_update`` for this rule
    moves: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = with_schema(type(self), cfg)
        check_settings(self.cfg, "ref_update")  # the ranges its schema declares (alpha, tau, ...)
        self.check()

    def check(self) -> None:
        """Raise ``ConfigError`` naming the ``ref_update.*`` field and the fix."""

    @classmethod
    def settings(cls, cfg: Any) -> dict[str, Any]:
        """The settings this rule reads (its schema's fields, defaults filled): a run's identity holds these and no
        other ``ref_update`` key. Override to leave out what the rule ignores."""
        return {k: cfg[k] for k in cfg if k != "name"}

    @classmethod
    def describe(cls, cfg: Any) -> str:
        """A readable label from ``settings``: ``drift α=0.5 τ=null threshold=0.01``."""
        name = cfg.name if cfg.name not in ("", "none") else cls.__name__
        own = {k: v for k, v in cls.settings(cfg).items() if k != "_target_"}
        return " ".join([str(name), *(f"{_SYMBOL.get(k, k + '=')}{_text(v)}" for k, v in own.items())])

    def alpha(self, stats: StepStats) -> float:
        """The α of the update after step ``stats.step``; 0 for none."""
        return 0.0

    def metrics(self) -> dict[str, float]:
        """Extra fields for the log row (the rule's own state, e.g. an estimate it tracks)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Frozen(Rule):
    """``ref_update=none``: the reference never moves (plain DPO / IPO / KTO)."""

    moves = False

    @classmethod
    def settings(cls, cfg: Any) -> dict[str, Any]:
        return {"_target_": cfg._target_}  # alpha and tau do nothing here

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return "frozen"


def require_tau(cfg: Any) -> None:
    """A rule that moves on a clock needs ``tau``; null is the frozen reference's."""
    if cfg.tau is None:
        raise ConfigError(
            "ref_update.tau=null is invalid: set ref_update.tau to an integer >= 1 (optimizer steps between updates), "
            "or ref_update=none for a frozen reference"
        )


class EveryTau(Rule):
    """``ref_update=soft|hard``: every ``tau`` optimizer steps, mix by ``alpha`` (1: the hard update, a copy)."""

    def check(self) -> None:
        require_tau(self.cfg)

    def alpha(self, stats: StepStats) -> float:
        return float(self.cfg.alpha) if stats.step % int(self.cfg.tau) == 0 else 0.0

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"hard τ={cfg.tau}" if cfg.alpha == 1 else f"soft α={cfg.alpha:g} τ={cfg.tau}"


def rule_class(target: str) -> type[Rule]:
    """The ``Rule`` subclass that ``ref_update._target_`` names; one line when it is not one."""
    return component_class(target, Rule, "ref_update")


def with_schema(cls: type[Rule], ref_update: Any | None) -> DictConfig:
    """``ref_update`` merged into the rule's schema (defaults filled in; None: the schema's defaults)."""
    return in_schema(cls, ref_update, "ref_update")


def build_rule(ref_update: DictConfig) -> Rule:
    """The rule ``ref_update`` selects, its settings checked against the rule's own schema: an unknown key, a wrong
    type or a value out of its declared range (``Rule.__init__``) is one line."""
    return rule_class(str(ref_update._target_))(ref_update)
