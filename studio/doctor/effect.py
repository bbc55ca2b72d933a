"""How strongly a LoRA changes the model: ``‖ΔW‖ / ‖W‖`` over the modules it touches, and its flags.

*Relative effect* of a LoRA on one expert at weight ``w``::

    relative_effect(w) = |w| · sqrt(Σ_m ‖[ΔW_m | Δb_m]‖²) / sqrt(Σ_m ‖[W_m | b_m]‖²)

over the modules ``m`` the LoRA changes on the loaded model (its factors as loaded, alpha
folded in; the expert's own base weights). It is exact (see :mod:`studio.doctor.factors`)
and linear in ``|w|``. Flags (the README states the same thresholds):

``no-effect``  ``relative_effect(w) < NO_EFFECT`` (1e-4: a change 40× smaller than the
               rounding step of bf16 weights, 2⁻⁸ ≈ 3.9e-3: the render cannot tell).
``strong``     ``relative_effect(w)`` at least ``FAR`` (4×) the library median.
``weak``       at most 1/``FAR`` of the library median (and not ``no-effect``).

The *library median* is the median relative effect at weight 1, on the same expert of the
same model, of the other LoRA files of the library (those that change it measurably); it
needs at least ``MIN_REFERENCES`` (3) of them, else there is no median, no ``strong`` /
``weak`` and no suggestion. ``suggested_weight = sign(w) · median / relative_effect(1)``
brings a LoRA to the median strength; it is a hint, never applied.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict

from studio.doctor.factors import LoraFactors, squared_bias, squared_change
from studio.engine.norms import ModuleNorm

NO_EFFECT = 1e-4
FAR = 4.0
MIN_REFERENCES = 3


class ModuleStats(BaseModel):
    """One module's change: ``‖ΔW‖²``, ``‖Δb‖²`` and the adapter's shape as loaded."""

    model_config = ConfigDict(extra="forbid")

    weight_sq: float
    bias_sq: float
    rank: int
    in_features: int
    out_features: int


class FileStats(BaseModel):
    """What the doctor keeps of one LoRA file on one model (cached): per-module sizes, or why none."""

    model_config = ConfigDict(extra="forbid")

    modules: dict[str, ModuleStats] = {}
    notes: list[str] = []
    error: str | None = None
    halves: dict[str, FileStats] = {}  # a two-expert (ai-toolkit) file: the stats of each half


def expert_half(stats: FileStats, expert: str) -> str | None:
    """The half of the file that goes on ``expert`` (None: the whole file)."""
    return expert if stats.halves else None


def expert_stats(stats: FileStats, expert: str) -> FileStats:
    """What of the file lands on ``expert``: its half of a two-expert file, else the file."""
    if not stats.halves:
        return stats
    if expert in stats.halves:
        return stats.halves[expert]
    return FileStats(error=f"the file holds no half for the {expert}-noise expert")


def file_stats(factors: LoraFactors, squares: Mapping[str, float] | None = None) -> FileStats:
    """Per-module sizes of a file's change; ``squares``: ``‖[ΔW | Δb]‖²`` per module when already known."""

    def weight_sq(name: str, m) -> float:
        if squares is None or name not in squares:
            return squared_change(m)
        return max(0.0, squares[name] - squared_bias(m))

    modules = {
        name: ModuleStats(
            weight_sq=weight_sq(name, m),
            bias_sq=squared_bias(m),
            rank=m.rank,
            in_features=m.in_features,
            out_features=m.out_features,
        )
        for name, m in factors.modules.items()
    }
    return FileStats(modules=modules, notes=factors.notes)


def relative_effect(stats: FileStats, norms: Mapping[str, ModuleNorm]) -> float | None:
    """``‖ΔW‖/‖W‖`` at weight 1 on the expert with these base norms; None when no module is known there."""
    change = base = 0.0
    for name, m in stats.modules.items():
        norm = norms.get(name)
        if norm is None:
            continue
        change += m.weight_sq + m.bias_sq
        base += norm.total_sq
    if base <= 0.0:
        return None
    return math.sqrt(change / base)


def library_median(values: Iterable[float | None]) -> float | None:
    """The median of the measurable reference effects (None with fewer than ``MIN_REFERENCES``)."""
    usable = [v for v in values if v is not None and v >= NO_EFFECT]
    if len(usable) < MIN_REFERENCES:
        return None
    return statistics.median(usable)


def round_weight(value: float) -> float:
    """Three significant digits (a hint for a slider, not a measurement)."""
    if value == 0.0 or not math.isfinite(value):
        return value
    return round(value, 2 - math.floor(math.log10(abs(value))))


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relative_effect: float | None
    relative_effect_at_1: float | None
    factor: float | None  # relative_effect / library median
    suggested_weight: float | None
    flags: list[str]


def judge(weight: float, at_1: float | None, median: float | None) -> Judgement:
    """Flags and the suggested weight of a LoRA at ``weight`` whose effect at weight 1 is ``at_1``."""
    if at_1 is None:
        return Judgement(
            relative_effect=None, relative_effect_at_1=None, factor=None, suggested_weight=None, flags=[]
        )
    effect = abs(weight) * at_1
    flags: list[str] = []
    factor = suggested = None
    if effect < NO_EFFECT:
        flags.append("no-effect")
    if median is not None:
        factor = effect / median
        if factor >= FAR:
            flags.append("strong")
        elif factor <= 1.0 / FAR and "no-effect" not in flags:
            flags.append("weak")
        if at_1 >= NO_EFFECT:
            suggested = round_weight(math.copysign(median / at_1, weight))
    return Judgement(
        relative_effect=effect,
        relative_effect_at_1=at_1,
        factor=factor,
        suggested_weight=suggested,
        flags=flags,
    )
