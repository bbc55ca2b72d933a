"""A render's LoRA weights step by step: what to fuse, and setting step *i*'s weights before step *i* runs.

:class:`StepWeights` holds, for each expert's component and adapter, the weight at each
of the run's steps (a schedule's values summed per adapter, see :mod:`studio.engine.plan`)
and which expert runs each step (:mod:`studio.engine.split`). What stays the same on every
step an expert runs is *constant* there (fusable); the rest is *scheduled* and stays unfused.

:class:`StepApplier` is what the manager's ``callback_on_step_end`` calls: after step *i*
it sets step *i+1*'s weights on the expert that runs step *i+1* (scales only, through
:func:`studio.engine.lora_ops.set_adapter_weights`, and only when they change), and it
records the weights in force at every step that ran, for the render record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from studio.engine import lora_ops

Weights = dict[str, float]  # adapter -> weight


@dataclass(frozen=True)
class StepWeights:
    experts: tuple[str, ...]  # "high"/"low" per step
    components: Mapping[str, str]  # expert -> pipeline component
    per_step: Mapping[str, Mapping[str, tuple[float, ...]]]  # component -> adapter -> weight per step

    @property
    def steps(self) -> int:
        return len(self.experts)

    def component_at(self, step: int) -> str:
        """The component that runs ``step`` (0-based); a one-expert model runs every step."""
        if len(self.components) == 1:
            return next(iter(self.components.values()))
        return self.components[self.experts[step]]

    def steps_of(self, component: str) -> list[int]:
        return [i for i in range(self.steps) if self.component_at(i) == component]

    def at(self, component: str, step: int) -> Weights:
        return {a: w[step] for a, w in self.per_step.get(component, {}).items()}

    def initial(self) -> dict[str, Weights]:
        """Each component's weights at the first step it runs (step 1's if it runs none)."""
        out = {}
        for component in self.per_step:
            steps = self.steps_of(component)
            out[component] = self.at(component, steps[0] if steps else 0)
        return {c: w for c, w in out.items() if w}

    def constant(self) -> dict[str, Weights]:
        """Adapters whose weight is the same on every step their component runs, with that weight."""
        out: dict[str, Weights] = {}
        for component, adapters in self.per_step.items():
            steps = self.steps_of(component) or [0]
            for adapter, weights in adapters.items():
                values = {weights[i] for i in steps}
                if len(values) == 1:
                    out.setdefault(component, {})[adapter] = weights[steps[0]]
        return out

    def fusable(self, active: Mapping[str, Mapping[str, float]], pipe: Any) -> dict[str, Weights]:
        """The ``active`` adapters that stay constant on their expert, as component → weights.

        A component with scheduled adapters fuses its constant ones only if every LoRA layer
        there can add unfused adapters on top of fused ones (the studio's fast forward).
        """
        scheduled = self.scheduled()
        out = {}
        for component, weights in self.constant().items():
            kept = {a: w for a, w in weights.items() if a in active.get(component, {})}
            if not kept:
                continue
            if scheduled.get(component) and not lora_ops.supports_partial_fuse(getattr(pipe, component)):
                continue
            out[component] = kept
        return out

    def scheduled(self) -> dict[str, set[str]]:
        """Adapters whose weight changes between the steps their component runs."""
        constant = self.constant()
        out = {}
        for component, adapters in self.per_step.items():
            moving = {a for a in adapters if a not in constant.get(component, {})}
            if moving:
                out[component] = moving
        return out


@dataclass
class StepApplier:
    """Sets each step's weights on the expert that runs it; remembers what was in force at each step."""

    pipe: Any
    plan: StepWeights
    current: dict[str, Weights]  # component -> the weights set on it now
    applied: list[tuple[str, Weights]] = field(default_factory=list)  # per step run: (component, weights)
    changes: int = 0

    def before_step(self, step: int) -> None:
        """Make step ``step`` (0-based) run with its weights; call it before the step runs."""
        component = self.plan.component_at(step)
        wanted = self.plan.at(component, step)
        if wanted and self.current.get(component) != wanted:
            lora_ops.set_adapter_weights(getattr(self.pipe, component), wanted)
            self.current[component] = wanted
            self.changes += 1
        self.applied.append((component, dict(self.current.get(component, {}))))

    def record(
        self, expert_of: Mapping[str, str], files: Mapping[tuple[str, str], str]
    ) -> list[dict[str, Any]]:
        """Per adapter and expert: the weight at each step that ran (None where the other expert ran)."""
        rows: dict[tuple[str, str], list[float | None]] = {}
        for component, adapters in self.plan.per_step.items():
            for adapter in adapters:
                rows[(component, adapter)] = [None] * len(self.applied)
        for i, (component, weights) in enumerate(self.applied):
            for adapter, weight in weights.items():
                if (component, adapter) in rows:
                    rows[(component, adapter)][i] = weight
        return [
            {
                "expert": expert_of[component],
                "adapter": adapter,
                "file": files.get((component, adapter), ""),
                "weights": weights,
            }
            for (component, adapter), weights in rows.items()
        ]


def fuse_pays_off(pipe: Any, components: Mapping[str, str], settings: Any, targets, split: Any) -> bool:
    """Whether fusing ``targets`` (component → adapter weights) beats running them unfused for a render.

    Fusing matches the unfused output to float rounding, is undone exactly (from a backup) and costs a
    fixed amount per module: it pays off for real renders (32,760 tokens at 480p) only. Each expert's
    forwards are its steps in the real split (twice with CFG).
    """
    tokens, _ = lora_ops.render_forwards(
        frames=settings.frames, height=settings.height, width=settings.width, steps=settings.steps,
        guidance=settings.guidance, experts=len(components),
    )  # fmt: skip
    cfg = 2 if settings.guidance > 1.0 else 1
    expert_of = {c: e for e, c in components.items()}
    return all(
        lora_ops.fuse_pays_off(
            getattr(pipe, c), tokens, max(1, len(split.steps_of(expert_of[c]))) * cfg, list(weights)
        )
        for c, weights in targets.items()
        if weights
    )


def lora_records(components, weights, loras, fused, scheduled) -> list[dict[str, Any]]:
    """The render record's ``loras``: per active adapter its expert, file, sha256, weight (at the expert's
    first step) and whether it is scheduled or fused."""
    expert_of = {c: e for e, c in components.items()}
    records = []
    for component, adapters in weights.items():
        for adapter, weight in adapters.items():
            lora = loras[(component, adapter)]
            records.append(
                {
                    "expert": expert_of[component], "adapter": adapter, "file": str(lora.identity.path),
                    "size": lora.identity.size, "sha256": lora.sha256, "weight": weight,
                    "scheduled": adapter in scheduled.get(component, set()),
                    "fused": adapter in fused.get(component, {}),
                }
            )  # fmt: skip
    return records
