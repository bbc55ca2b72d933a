"""Planning a stack change as a diff against what is loaded (pure: no model, no tensor reads).

An adapter is one LoRA file in one expert. Its name is derived from the file's identity
(resolved path, size, mtime), so reordering the stack or renaming an entry changes
nothing, a file edited on disk is reloaded, and one file used by two entries is loaded
once with the weights added up (LoRA deltas add).

Entries that are disabled or at weight 0 keep their adapter if it is already loaded
(turning them back on is then only a scale change) and are not loaded otherwise.

With a :class:`StepContext` (the render's expert per step) schedules are evaluated per
step: ``step_weights`` holds each adapter's weight at every step of the run, an adapter
is active on an expert when it is non-zero on a step that expert runs, and ``weights``
holds the weights at each expert's first step. Without one, a schedule stands at its first
step's weight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import LoraFileError
from studio.loras.sources import FileIdentity, resolve_source
from studio.stack import schedule as sched
from studio.stack.schema import Stack, StackEntry

AdapterKey = tuple[str, str]  # (pipeline component, adapter name)


@dataclass(frozen=True)
class StepContext:
    """The render's steps as the schedules see them: which expert runs each step."""

    experts: tuple[str, ...]

    @property
    def steps(self) -> int:
        return len(self.experts)


@dataclass
class AdapterPlan:
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # component -> adapter -> weight
    to_load: dict[FileIdentity, list[AdapterKey]] = field(default_factory=dict)
    to_delete: list[AdapterKey] = field(default_factory=list)
    # component -> adapter -> weight at each step of the run (one value without a StepContext)
    step_weights: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)


def adapter_name(identity: FileIdentity) -> str:
    text = f"{identity.path}|{identity.size}|{identity.mtime_ns}"
    return "lora_" + hashlib.sha1(text.encode()).hexdigest()[:12]


def expert_parts(entry: StackEntry, components: Mapping[str, str]):
    """(component, source, weight) for each expert of the model that ``entry`` names a file for; a scheduled
    expert gives the schedule's weight of largest magnitude (what the stack doctor weighs it at)."""
    for component, source, _weights, _runs, expert in _expert_parts(entry, components, None):
        yield component, source, sched.peak(entry.schedule(expert))


def _expert_parts(entry: StackEntry, components: Mapping[str, str], context: StepContext | None):
    """(component, source, weights per step, the steps it runs, expert) for each expert ``entry`` names a file for."""
    steps = 1 if context is None else context.steps

    def weights(expert: str) -> tuple[float, ...]:
        if not entry.enabled:
            return (0.0,) * steps  # a disabled entry's schedule is not checked
        if context is None:
            return (entry.first_weight(expert),)
        return entry.step_weights(expert, steps)

    if len(components) == 1:  # one-expert model: the high part, or the low part if that's all there is
        (component,) = components.values()
        expert = "high" if entry.high is not None else "low"
        yield component, entry.source(expert), weights(expert), list(range(steps)), expert
        return
    for expert, component in components.items():
        source = entry.source(expert)
        if source is not None:
            runs = (
                list(range(steps))
                if context is None
                else [i for i, e in enumerate(context.experts) if e == expert]
            )
            yield component, source, weights(expert), runs, expert


def plan_stack(
    stack: Stack,
    *,
    roots: Sequence[Path],
    components: Mapping[str, str],
    loaded: Mapping[AdapterKey, FileIdentity],
    context: StepContext | None = None,
) -> AdapterPlan:
    plan = AdapterPlan()
    keep: set[AdapterKey] = set()
    identities: dict[str, FileIdentity] = {}
    for entry in stack.entries:
        for component, source, weights, runs, _expert in _expert_parts(entry, components, context):
            active = any(weights[i] != 0.0 for i in runs)
            key_text = source.model_dump_json()
            identity = identities.get(key_text)
            if identity is None:
                try:
                    identity = FileIdentity.of(resolve_source(source, roots))
                except LoraFileError as exc:
                    if active:
                        raise LoraFileError(f"{entry.name}: {exc}") from None
                    continue
                except OSError:
                    if active:
                        raise LoraFileError(
                            f"{entry.name}: the file {source.label()} cannot be read; add it again."
                        ) from None
                    continue
                identities[key_text] = identity
            key = (component, adapter_name(identity))
            if active:
                per_step = plan.step_weights.setdefault(component, {})
                previous = per_step.get(key[1])
                per_step[key[1]] = (
                    weights
                    if previous is None
                    else tuple(a + b for a, b in zip(previous, weights, strict=True))
                )
                keep.add(key)
                if key not in loaded:
                    targets = plan.to_load.setdefault(identity, [])
                    if key not in targets:
                        targets.append(key)
            elif key in loaded:
                keep.add(key)
    plan.to_delete = [key for key in loaded if key not in keep]
    for component, adapters in plan.step_weights.items():
        first = _first_step(component, components, context)
        plan.weights[component] = {adapter: weights[first] for adapter, weights in adapters.items()}
    return plan


def _first_step(component: str, components: Mapping[str, str], context: StepContext | None) -> int:
    """The first step ``component`` runs (0 when it runs none, or without a step context)."""
    if context is None or len(components) == 1:
        return 0
    expert = next(e for e, c in components.items() if c == component)
    return next((i for i, e in enumerate(context.experts) if e == expert), 0)
