"""Which expert runs which step, from the real scheduler timesteps (no model needed).

The Wan2.2 loop runs ``transformer`` (high-noise) while ``t >= boundary_ratio · 1000`` and
``transformer_2`` (low-noise) after, where ``t`` are the *shifted* timesteps of the
pipeline's UniPC scheduler for the render's step count and shift. :func:`make_scheduler`
is the one way the manager builds that scheduler, and :func:`expert_split` computes the
same timesteps, so the split the UI's timeline shows before a render is the one the
render runs (its record's ``experts_per_step``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from studio.stack.schedule import ScheduleError


def split_steps(
    timesteps: Sequence[float], boundary: float | None, high_steps: int | None = None
) -> list[str]:
    """Which expert runs each step: ``"high"`` while ``t >= boundary`` (as the Wan2.2 loop decides).

    ``boundary`` is ``boundary_ratio · num_train_timesteps`` (None: a one-expert model, all
    ``"high"``). ``high_steps`` = K puts the first K steps on the high-noise expert instead.
    """
    count = len(timesteps)
    if boundary is None:
        return ["high"] * count
    if high_steps is not None:
        if not (0 <= high_steps <= count):
            raise ScheduleError(f"high-noise steps must be between 0 and {count} (got {high_steps})")
        return ["high"] * high_steps + ["low"] * (count - high_steps)
    return ["high" if float(t) >= boundary else "low" for t in timesteps]


def boundary_for_high_steps(timesteps: Sequence[float], high_steps: int, num_train_timesteps: int) -> float:
    """A ``boundary_ratio`` that makes the Wan2.2 loop run exactly the first ``high_steps`` steps on the high expert.

    Halfway between the last high step's timestep and the first low step's, so float
    rounding in ``ratio · num_train_timesteps`` cannot move the switch.
    """
    ts = [float(t) for t in timesteps]
    count = len(ts)
    if not (0 <= high_steps <= count):
        raise ScheduleError(f"high-noise steps must be between 0 and {count} (got {high_steps})")
    if high_steps == count:
        return 0.0 if min(ts) >= 0 else (min(ts) - 1.0) / num_train_timesteps
    if high_steps == 0:
        return (ts[0] + 1.0) / num_train_timesteps
    above, below = ts[high_steps - 1], ts[high_steps]
    if not above > below:
        raise ScheduleError(
            f"steps {high_steps} and {high_steps + 1} share the timestep {below:g}, so the expert cannot switch "
            "between them; choose another number of high-noise steps"
        )
    return (above + below) / 2.0 / num_train_timesteps


def folder_scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler config saved in a diffusers pipeline folder (``scheduler/scheduler_config.json``)."""
    from studio.errors import ModelError

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"The scheduler config {path} cannot be read ({exc}); download the model again."
        ) from None


def make_scheduler(config: Mapping[str, Any], shift: float):
    """The pipeline's scheduler with ``flow_shift`` = ``shift`` (what renders use)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config({**dict(config), "flow_shift": float(shift)})


@lru_cache(maxsize=256)
def _timesteps(config_items: tuple, steps: int, shift: float) -> tuple[int | float, ...]:
    scheduler = make_scheduler(dict(config_items), shift)
    scheduler.set_timesteps(steps, device="cpu")
    return tuple(t.item() for t in scheduler.timesteps)


def timesteps(config: Mapping[str, Any], steps: int, shift: float) -> tuple[int | float, ...]:
    """The timesteps the pipeline's loop will see for ``steps`` steps at ``shift``."""
    items = tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in dict(config).items()))
    return _timesteps(items, int(steps), float(shift))


@dataclass(frozen=True)
class Split:
    """The expert of each step and the ``boundary_ratio`` that makes the loop run it that way."""

    timesteps: tuple[int | float, ...]
    experts: tuple[str, ...]  # "high" / "low" per step
    boundary_ratio: float | None  # what the pipeline's config must hold for this split (None: one expert)
    high_steps: int | None  # K when set by the user, else None (the model's boundary decides)

    @property
    def steps(self) -> int:
        return len(self.experts)

    @property
    def high_count(self) -> int:
        return sum(1 for e in self.experts if e == "high")

    def steps_of(self, expert: str) -> list[int]:
        """0-based indices of the steps ``expert`` runs."""
        return [i for i, e in enumerate(self.experts) if e == expert]

    def label(self) -> str:
        if self.boundary_ratio is None:
            return f"{self.steps} steps on one expert"
        high = self.high_count
        return f"{high} high-noise + {self.steps - high} low-noise steps"


def expert_split(
    scheduler_config: Mapping[str, Any],
    *,
    steps: int,
    shift: float,
    boundary_ratio: float | None,
    high_steps: int | None = None,
) -> Split:
    """The split for a render: the model's ``boundary_ratio``, or the first ``high_steps`` on the high expert.

    ``boundary_ratio`` None means a one-expert model (``high_steps`` is then ignored).
    Raises ScheduleError for a ``high_steps`` that no boundary can produce.
    """
    ts = timesteps(scheduler_config, steps, shift)
    if boundary_ratio is None:
        return Split(ts, tuple(split_steps(ts, None)), None, None)
    train = int(dict(scheduler_config).get("num_train_timesteps", 1000))
    if high_steps is None:
        return Split(ts, tuple(split_steps(ts, boundary_ratio * train)), boundary_ratio, None)
    ratio = boundary_for_high_steps(ts, high_steps, train)
    experts = tuple(split_steps(ts, ratio * train))
    assert experts.count("high") == high_steps, "the computed boundary does not give the asked split"
    return Split(ts, experts, ratio, high_steps)


def split_for(scheduler_config: Mapping[str, Any], spec: Any, settings: Any) -> Split:
    """The split of a render with ``settings`` on the model ``spec`` (its experts and boundary);
    ``settings.high_steps`` sets it instead of the boundary. A sentence if that cannot be."""
    from studio.errors import ValidationError

    two = spec is not None and spec.experts == 2 and spec.boundary_ratio is not None
    try:
        return expert_split(
            scheduler_config,
            steps=settings.steps,
            shift=settings.shift,
            boundary_ratio=spec.boundary_ratio if two else None,
            high_steps=settings.high_steps,
        )
    except ValueError as exc:
        raise ValidationError(f"High-noise steps: {exc}.") from None


@contextlib.contextmanager
def pipeline_boundary(pipe: Any, ratio: float | None):
    """The pipeline switches experts at ``ratio`` while inside (its config's ``boundary_ratio``, restored after)."""
    previous = pipe.config.boundary_ratio
    if ratio is None or ratio == previous:
        yield
        return
    pipe.register_to_config(boundary_ratio=ratio)
    try:
        yield
    finally:
        pipe.register_to_config(boundary_ratio=previous)
