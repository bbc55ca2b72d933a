"""The doctor's findings as typed data: per LoRA and expert, per pair, the cost, and a one-line summary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from studio.doctor.cost import StackCost
from studio.doctor.effect import FAR, MIN_REFERENCES, NO_EFFECT
from studio.doctor.pairs import CONFLICT, REDUNDANT

REPORT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraFinding(_Model):
    """One LoRA of the stack on one expert."""

    file: str
    name: str
    entry: str  # the stack entry's id
    expert: str
    weight: float
    relative_effect: float | None  # ‖ΔW‖/‖W‖ at ``weight``
    relative_effect_at_1: float | None
    factor: float | None  # relative_effect / the library median
    suggested_weight: float | None
    modules: int  # modules it changes on this model
    flags: list[str]
    error: str | None = None  # why the file cannot be measured (the render would say the same)


class PairFinding(_Model):
    """Two LoRAs of the stack on the same expert."""

    a: str  # file
    b: str
    a_name: str
    b_name: str
    a_entry: str
    b_entry: str
    expert: str
    shared_modules: int
    cosine: float | None
    flags: list[str]
    scale_both: float | None = None  # redundant: multiply both weights by this


class LibraryReference(_Model):
    """What ``strong``/``weak`` compare with on one expert."""

    expert: str
    median: float | None
    count: int  # reference LoRAs that change this expert measurably


def thresholds() -> dict[str, float]:
    return {
        "no_effect": NO_EFFECT,
        "far_factor": FAR,
        "min_references": MIN_REFERENCES,
        "conflict": CONFLICT,
        "redundant": REDUNDANT,
    }


def _percent(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{100 * value:.3g}%"


class DoctorReport(_Model):
    version: int = REPORT_VERSION
    model: str
    loras: list[LoraFinding]
    pairs: list[PairFinding]
    cost: StackCost | None
    library: list[LibraryReference]
    thresholds: dict[str, float]
    notes: list[str] = []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flags_by_entry(self) -> dict[str, list[str]]:
        """Entry id → its flags (of both experts and its pairs), in a stable order, for badges."""
        out: dict[str, list[str]] = {}
        for f in self.loras:
            for flag in [*f.flags, *(["error"] if f.error else [])]:
                out.setdefault(f.entry, [])
                if flag not in out[f.entry]:
                    out[f.entry].append(flag)
        for p in self.pairs:
            for entry in (p.a_entry, p.b_entry):
                for flag in p.flags:
                    out.setdefault(entry, [])
                    if flag not in out[entry]:
                        out[entry].append(flag)
        return out

    def problems(self) -> list[str]:
        """One short phrase per flag (what the summary line and the panel's header list)."""
        out: list[str] = []
        for f in self.loras:
            where = f"{f.name} ({f.expert})"
            if f.error:
                out.append(f"{where}: cannot be measured")
                continue
            if "no-effect" in f.flags:
                out.append(f"{where}: no effect ({_percent(f.relative_effect)})")
            for flag in ("strong", "weak"):
                if flag in f.flags and f.factor is not None:
                    hint = f", try {f.suggested_weight:g}" if f.suggested_weight is not None else ""
                    out.append(f"{where}: {flag} ×{f.factor:.2g} the library median{hint}")
        for p in self.pairs:
            for flag in p.flags:
                cos = f"cos {p.cosine:+.2f}" if p.cosine is not None else ""
                hint = f", lower both ×{p.scale_both:g}" if p.scale_both is not None else ""
                out.append(f"{p.a_name} + {p.b_name} ({p.expert}): {flag} ({cos}{hint})")
        return out

    def summary(self) -> str:
        """The line for the render record: each LoRA's relative effect, then the problems found."""
        if not self.loras:
            return "doctor: no active LoRAs"
        effects = ", ".join(f"{f.name} {f.expert} {_percent(f.relative_effect)}" for f in self.loras)
        problems = self.problems()
        tail = "; ".join(problems) if problems else "no problems found"
        return f"doctor: {effects} — {tail}"
