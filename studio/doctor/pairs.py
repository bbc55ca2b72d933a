"""Two LoRAs on the same expert: which modules they share, and whether they pull together or apart.

For LoRAs ``a`` and ``b`` at weights ``w_a``, ``w_b`` on one expert, over the modules both change::

    cosine = sign(w_a·w_b) · Σ_m ⟨ΔW_a,m, ΔW_b,m⟩ / sqrt(Σ_m ‖ΔW_a,m‖² · Σ_m ‖ΔW_b,m‖²)

(bias changes count as one more column; inner products from the factors, see
:func:`studio.doctor.factors.inner_matrix`). Flags (the README states the same thresholds):

``conflict``   ``cosine ≤ CONFLICT`` (−0.5): on the shared modules they undo each other.
``redundant``  ``cosine ≥ REDUNDANT`` (+0.5): stacking them adds up one change, roughly
               doubling it. The suggestion lowers both weights by the same factor ``k`` so
               that the two together change the shared modules as much as the stronger one
               alone: ``k = max(s_a, s_b) / sqrt(s_a² + s_b² + 2·cosine·s_a·s_b)`` with ``s`` each
               LoRA's scaled size on those modules.

Two LoRAs with no module in common get no cosine and no flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from studio.doctor.effect import FileStats, round_weight

CONFLICT = -0.5
REDUNDANT = 0.5


class PairJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shared_modules: int
    cosine: float | None
    flags: list[str]
    scale_both: float | None = None  # multiply both weights by this (redundant pairs)


def judge_pair(
    dots: Mapping[str, float], a: FileStats, b: FileStats, weight_a: float, weight_b: float
) -> PairJudgement:
    """The cosine of two LoRAs' weight changes at their weights, and its flags."""
    names = [n for n in dots if n in a.modules and n in b.modules]
    if not names:
        return PairJudgement(shared_modules=0, cosine=None, flags=[])
    size_a = sum(a.modules[n].weight_sq + a.modules[n].bias_sq for n in names)
    size_b = sum(b.modules[n].weight_sq + b.modules[n].bias_sq for n in names)
    if size_a <= 0.0 or size_b <= 0.0 or weight_a == 0.0 or weight_b == 0.0:
        return PairJudgement(shared_modules=len(names), cosine=None, flags=[])
    cosine = sum(dots[n] for n in names) / math.sqrt(size_a * size_b)
    cosine = max(-1.0, min(1.0, math.copysign(1.0, weight_a * weight_b) * cosine))
    flags: list[str] = []
    scale = None
    if cosine <= CONFLICT:
        flags.append("conflict")
    elif cosine >= REDUNDANT:
        flags.append("redundant")
        s_a, s_b = abs(weight_a) * math.sqrt(size_a), abs(weight_b) * math.sqrt(size_b)
        together = math.sqrt(s_a * s_a + s_b * s_b + 2.0 * cosine * s_a * s_b)
        scale = round_weight(max(s_a, s_b) / together)
    return PairJudgement(shared_modules=len(names), cosine=cosine, flags=flags, scale_both=scale)
