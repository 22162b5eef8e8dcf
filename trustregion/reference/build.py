"""Which reference a run builds, decided once before its engine: none, a frozen one whose log-probs are cached instead
of a model, a copy of the policy, LoRA's view of the policy's own base; the starting model kept for generation
evaluation; and the Trust-Region update where the reference moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from trustregion.engines.base import Engine
from trustregion.models.loading import make_reference
from trustregion.reference.adapter import build_reference
from trustregion.reference.rules import Rule
from trustregion.reference.select import make_applier
from trustregion.reference.update import ReferenceUpdate


@dataclass(frozen=True)
class ReferencePlan:
    """What a run builds beside its policy. A frozen reference on one process is needed only for its log-probs, which
    equal the starting policy's: they are cached before training and no reference model is built (one model's memory
    saved); under LoRA the reference is a view of the policy's own base, nearly free, so it is built all the same."""

    reference: bool  # a reference model is built
    moves: bool  # the reference moves: the loop runs a ReferenceUpdate
    cached: bool  # its log-probs are the cached SFT ones (``Objective.reference_from_cache``)
    sft_model: bool  # the starting model is kept for generation evaluation (KL to it, its samples)

    @classmethod
    def decide(
        cls, *, uses_reference: bool, moves: bool, cache: bool, world_size: int, lora: bool, generate: bool
    ) -> ReferencePlan:
        """The plan of an objective that ``uses_reference`` (SFT does not) under a rule that ``moves`` or not, with
        ``trainer.cache_reference`` = ``cache`` on ``world_size`` processes; ``generate``: generation evaluation runs."""
        moves = uses_reference and moves
        cached = uses_reference and not moves and cache and world_size == 1
        return cls(reference=uses_reference and (lora or not cached), moves=moves, cached=cached, sft_model=generate)

    @property
    def reference_forward(self) -> bool:
        """Whether each step runs the reference's forward (it is built and its log-probs are not cached)."""
        return self.reference and not self.cached

    def build(
        self, policy: nn.Module, peft: DictConfig | None, sharded: bool
    ) -> tuple[nn.Module | None, nn.Module | None]:
        """(the reference, the SFT model) the plan asks for, None where it does not; ``peft``: LoRA's settings, None
        for full fine-tuning; ``sharded``: under ZeRO-3."""
        reference = reference_model(policy, peft, self.moves, sharded) if self.reference else None
        sft_model = reference_model(policy, peft, False, sharded, name="sft") if self.sft_model else None
        return reference, sft_model

    def update(self, rule: Rule | None, engine: Engine) -> ReferenceUpdate | None:
        """The loop's reference update (``rule`` and the applier the engine's models call for), where it moves."""
        if not self.moves or rule is None:
            return None
        return ReferenceUpdate(rule, make_applier(engine), engine)


def reference_model(
    policy: nn.Module, peft: DictConfig | None, moving: bool, sharded: bool, name: str = "reference"
) -> nn.Module:
    """A frozen copy of the policy; under LoRA (``peft`` given) a view of the policy's own base plus a delta
    (``AdapterReference``; ``name``: the PEFT adapter that holds its factors)."""
    if peft is not None:
        return build_reference(policy, peft, moving, name, sharded=sharded)
    return make_reference(policy)
