"""LoRA strength schedules: what weight a LoRA has at each denoising step (pure: no model, no torch).

A schedule is written as a short string wherever a weight can be given (stack JSON,
presets, the CLI's ``--lora FILE:HIGH:LOW``, the UI's schedule editor). Its steps are
the **whole run's** steps 1 … N, whichever expert runs them:

=================  =================================================================
``0.8``            constant (the plain weight)
``1,1,0.5,0``      one weight per step; the list must have exactly N weights
``1>0``            a linear ramp from the first step to the last
``1>0 cosine``     the same ramp, eased (slow at both ends)
``0.8@0-50%``      0.8 during the first half of the run, 0 outside it
``1@1-2``          1 on steps 1 and 2 (1-based, inclusive), 0 outside
``1>0@0-50%``      a ramp over the range, 0 outside it
=================  =================================================================

A percent range ``A-B%`` holds the steps whose start lies in ``[A%, B%)`` of the run (step
*i* of *N* starts at ``(i-1)/N``), so ``0-50%`` and ``50-100%`` split a run without overlap;
``@3-`` / ``@50%-`` run to the end, ``@3`` is one step.

Parsing checks the syntax and that every weight is in range; :meth:`weights` checks what
depends on the step count (a list's length, a range inside the run) and raises
:class:`ScheduleError` with a sentence the caller prefixes with the entry and expert.
Which expert runs which step is :mod:`studio.engine.split` (from the real scheduler timesteps).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

MIN_WEIGHT = -10.0
MAX_WEIGHT = 10.0
MAX_LIST = 1000  # longest per-step list accepted (the step count is capped far lower)

Ease = Literal["linear", "cosine"]


class ScheduleError(ValueError):
    """A schedule that cannot be read, or does not fit the run's steps (the message is a sentence part)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constant(_Frozen):
    kind: Literal["constant"] = "constant"
    value: float


class StepList(_Frozen):
    kind: Literal["list"] = "list"
    values: tuple[float, ...] = Field(min_length=2, max_length=MAX_LIST)


class Ramp(_Frozen):
    kind: Literal["ramp"] = "ramp"
    start: float
    end: float
    ease: Ease = "linear"


class Range(_Frozen):
    """``weight`` (a number or a ramp over the range) on some steps, 0 elsewhere.

    ``unit="step"``: steps ``first``…``last`` (1-based, inclusive; ``last=None`` = to the end).
    ``unit="percent"``: steps starting in ``[first%, last%)`` of the run (``last=None`` = 100).
    """

    kind: Literal["range"] = "range"
    weight: float | Ramp
    first: float
    last: float | None = None
    unit: Literal["step", "percent"] = "step"


ScheduleModel = Annotated[Constant | StepList | Ramp | Range, Field(discriminator="kind")]
SCHEDULE_TYPES = (Constant, StepList, Ramp, Range)


# --------------------------------------------------------------------------- text form
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RAMP = re.compile(rf"^({_NUM})\s*>\s*({_NUM})(?:\s*(linear|cosine|cos))?$")
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)?\s*(%?)\s*(?:(-)\s*(\d+(?:\.\d+)?)?\s*(%?))?$")


def _number(text: str, what: str = "weight") -> float:
    text = text.strip()
    if not re.fullmatch(_NUM, text):
        raise ScheduleError(f"{text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ScheduleError(f"the {what} {text} is not a finite number")
    return value


def _check(value: float) -> float:
    if value != value or not (MIN_WEIGHT <= value <= MAX_WEIGHT):
        raise ScheduleError(
            f"a LoRA weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g} (got {value:g})"
        )
    return float(value)


def fmt(value: float) -> str:
    """A weight as short text that reads back exactly (``1`` not ``1.0``, ``0.1`` not ``0.1000…``)."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def _ramp(text: str) -> Ramp:
    match = _RAMP.match(text)
    if not match:
        raise ScheduleError(
            f"{text!r} is not a ramp; write START>END, e.g. 1>0, or 1>0 cosine for an eased one"
        )
    ease = "cosine" if match.group(3) in ("cosine", "cos") else "linear"
    return Ramp(start=_check(_number(match.group(1))), end=_check(_number(match.group(2))), ease=ease)


def _span(text: str) -> tuple[float, float | None, Literal["step", "percent"]]:
    match = _SPAN.match(text.strip())
    if not match or match.group(1) is None:
        raise ScheduleError(
            f"{text!r} is not a step range; write FIRST-LAST steps (1-2, 3-) or percent of the run (0-50%, 30%-)"
        )
    first_text, first_pct, dash, last_text, last_pct = match.groups()
    percent = bool(first_pct or last_pct)
    first = float(first_text)
    last = float(last_text) if last_text is not None else (None if dash else first)
    if percent:
        if not (0 <= first <= 100) or (last is not None and not (0 <= last <= 100)):
            raise ScheduleError(f"the range {text.strip()} must stay within 0-100%")
        if last is not None and last <= first:
            raise ScheduleError(f"the range {text.strip()} is empty; its end must be above its start")
        return first, last, "percent"
    if first != int(first) or (last is not None and last != int(last)):
        raise ScheduleError(
            f"the steps in {text.strip()} must be whole numbers (or add % for a share of the run)"
        )
    if first < 1:
        raise ScheduleError(f"steps count from 1, so the range {text.strip()} cannot start at {first:g}")
    if last is not None and last < first:
        raise ScheduleError(f"the range {text.strip()} ends before it starts")
    return first, last, "step"


def parse(value: Any) -> ScheduleModel:
    """A schedule from its text form, a number, a list of numbers, or its JSON object form."""
    if isinstance(value, SCHEDULE_TYPES):
        return value
    if isinstance(value, bool):
        raise ScheduleError("a schedule is a number or text such as 1>0, not true/false")
    if isinstance(value, (int, float)):
        return Constant(value=_check(float(value)))
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ScheduleError("a per-step list must hold numbers only")
        if len(value) == 1:
            return Constant(value=_check(float(value[0])))
        if len(value) > MAX_LIST:
            raise ScheduleError(f"a per-step list can have at most {MAX_LIST} weights")
        return StepList(values=tuple(_check(float(v)) for v in value))
    if isinstance(value, dict):
        from pydantic import TypeAdapter
        from pydantic import ValidationError as PydanticValidationError

        try:
            return TypeAdapter(ScheduleModel).validate_python(value)
        except PydanticValidationError as exc:
            raise ScheduleError(f"the schedule object is not valid ({exc.errors()[0]['msg']})") from None
    if not isinstance(value, str):
        raise ScheduleError(f"a schedule must be a number or text, not {type(value).__name__}")
    text = " ".join(value.strip().lower().split())
    if not text:
        raise ScheduleError("the schedule is empty; give a number such as 1, or a schedule such as 1>0")
    if len(text) > 20_000:
        raise ScheduleError("the schedule text is too long")
    if "@" in text:
        weight_text, _, span_text = text.partition("@")
        weight_text = weight_text.strip()
        if "@" in span_text:
            raise ScheduleError("a schedule can have only one @ range")
        if "," in weight_text:
            raise ScheduleError("a range takes one weight or a ramp (0.8@0-50%, 1>0@1-4), not a list")
        weight = _ramp(weight_text) if ">" in weight_text else _check(_number(weight_text))
        first, last, unit = _span(span_text)
        return Range(weight=weight, first=first, last=last, unit=unit)
    if ">" in text:
        return _ramp(text)
    if "," in text:
        parts = [p for p in (s.strip() for s in text.split(",")) if p != ""]
        if len(parts) > MAX_LIST:
            raise ScheduleError(f"a per-step list can have at most {MAX_LIST} weights")
        values = tuple(_check(_number(p)) for p in parts)
        return StepList(values=values) if len(values) > 1 else Constant(value=values[0])
    if re.fullmatch(_NUM, text):
        return Constant(value=_check(_number(text)))
    raise ScheduleError(
        f"{value.strip()!r} is not a schedule; write a number (0.8), a per-step list (1,1,0.5,0), "
        "a ramp (1>0, 1>0 cosine) or a range (0.8@0-50%, 1@1-2)"
    )


def text(schedule: ScheduleModel) -> str:
    """The canonical text form (what stack and preset files store; :func:`parse` reads it back)."""
    if isinstance(schedule, Constant):
        return fmt(schedule.value)
    if isinstance(schedule, StepList):
        return ",".join(fmt(v) for v in schedule.values)
    if isinstance(schedule, Ramp):
        ramp = f"{fmt(schedule.start)}>{fmt(schedule.end)}"
        return ramp + (" cosine" if schedule.ease == "cosine" else "")
    weight = text(schedule.weight) if isinstance(schedule.weight, Ramp) else fmt(schedule.weight)
    pct = "%" if schedule.unit == "percent" else ""
    if schedule.last is None:
        return f"{weight}@{fmt(schedule.first)}{pct}-"
    if schedule.unit == "step" and schedule.last == schedule.first:
        return f"{weight}@{fmt(schedule.first)}"
    return f"{weight}@{fmt(schedule.first)}-{fmt(schedule.last)}{pct}"


def _coerce(value: Any) -> Any:
    try:
        return parse(value)
    except ScheduleError as exc:
        raise ValueError(str(exc)) from None


Schedule = Annotated[
    ScheduleModel,
    BeforeValidator(_coerce),
    PlainSerializer(text, return_type=str),
    WithJsonSchema({"type": "string", "description": "a LoRA weight schedule, e.g. 1>0 or 0.8@0-50%"}),
]
"""The field type for a schedule in user-edited files: read from text/number/list, written as text."""


# --------------------------------------------------------------------------- evaluation
def _ramp_values(ramp: Ramp, count: int) -> list[float]:
    if count == 1:
        return [ramp.start]
    out = []
    for k in range(count):
        x = k / (count - 1)
        if ramp.ease == "cosine":
            x = (1.0 - math.cos(math.pi * x)) / 2.0
        # The end points are exact: a constant ramp equals its number bit for bit.
        out.append(
            ramp.start if k == 0 else ramp.end if k == count - 1 else ramp.start + (ramp.end - ramp.start) * x
        )
    return out


def _covered(schedule: Range, steps: int) -> list[int]:
    """0-based indices of the steps the range holds (may be empty)."""
    if schedule.unit == "step":
        first = int(schedule.first)
        last = steps if schedule.last is None else int(schedule.last)
        return list(range(first - 1, min(last, steps)))
    lo = Fraction(schedule.first).limit_denominator(10**6) / 100
    hi = Fraction(100 if schedule.last is None else schedule.last).limit_denominator(10**6) / 100
    return [i for i in range(steps) if lo <= Fraction(i, steps) < hi]


def weights(schedule: ScheduleModel, steps: int) -> tuple[float, ...]:
    """The weight at each of ``steps`` steps (index 0 = step 1); ScheduleError if it does not fit."""
    if steps < 1:
        raise ScheduleError("a run needs at least one step")
    if isinstance(schedule, Constant):
        return (schedule.value,) * steps
    if isinstance(schedule, StepList):
        if len(schedule.values) != steps:
            raise ScheduleError(
                f"the per-step list has {len(schedule.values)} weights but the render has {steps} steps; "
                "give one weight per step (or use a ramp or a range, which fit any step count)"
            )
        return tuple(schedule.values)
    if isinstance(schedule, Ramp):
        return tuple(_ramp_values(schedule, steps))
    if schedule.unit == "step":
        first = int(schedule.first)
        last = steps if schedule.last is None else int(schedule.last)
        if first > steps or last > steps:
            raise ScheduleError(
                f"the range {text(schedule).partition('@')[2]} goes past the last step (the render has {steps} steps)"
            )
    covered = _covered(schedule, steps)
    if not covered:
        raise ScheduleError(
            f"the range {text(schedule).partition('@')[2]} holds none of the {steps} steps; widen it"
        )
    out = [0.0] * steps
    inner = schedule.weight if isinstance(schedule.weight, Ramp) else Constant(value=schedule.weight)
    values = _ramp_values(inner, len(covered)) if isinstance(inner, Ramp) else [inner.value] * len(covered)
    for index, value in zip(covered, values, strict=True):
        out[index] = value
    return tuple(out)


def first_weight(schedule: ScheduleModel) -> float:
    """The weight at step 1, whatever the step count (for places without a step count)."""
    if isinstance(schedule, Constant):
        return schedule.value
    if isinstance(schedule, StepList):
        return schedule.values[0]
    if isinstance(schedule, Ramp):
        return schedule.start
    starts = schedule.first == (1 if schedule.unit == "step" else 0)
    if not starts:
        return 0.0
    return schedule.weight.start if isinstance(schedule.weight, Ramp) else schedule.weight


def can_apply(schedule: ScheduleModel) -> bool:
    """Whether the schedule is non-zero at some step of some run (a LoRA at 0 throughout does nothing)."""
    if isinstance(schedule, Constant):
        return schedule.value != 0.0
    if isinstance(schedule, StepList):
        return any(v != 0.0 for v in schedule.values)
    if isinstance(schedule, Ramp):
        return schedule.start != 0.0 or schedule.end != 0.0
    return can_apply(
        schedule.weight if isinstance(schedule.weight, Ramp) else Constant(value=schedule.weight)
    )


def peak(schedule: ScheduleModel) -> float:
    """The weight of largest magnitude the schedule can reach (for summaries and estimates)."""
    if isinstance(schedule, Constant):
        return schedule.value
    if isinstance(schedule, StepList):
        return max(schedule.values, key=abs)
    if isinstance(schedule, Ramp):
        return max(schedule.start, schedule.end, key=abs)
    return peak(schedule.weight if isinstance(schedule.weight, Ramp) else Constant(value=schedule.weight))


def is_constant(schedule: ScheduleModel) -> bool:
    return isinstance(schedule, Constant)


def describe(schedule: ScheduleModel) -> str:
    """A few words for people: ``ramp 1 → 0 (cosine)``, ``0.8 on 0-50% of the steps``."""
    if isinstance(schedule, Constant):
        return fmt(schedule.value)
    if isinstance(schedule, StepList):
        return f"per step: {text(schedule)}"
    if isinstance(schedule, Ramp):
        return f"ramp {fmt(schedule.start)} → {fmt(schedule.end)}" + (
            " (cosine)" if schedule.ease == "cosine" else ""
        )
    inner = describe(schedule.weight) if isinstance(schedule.weight, Ramp) else fmt(schedule.weight)
    first = fmt(schedule.first)
    if schedule.unit == "percent":
        where = f"{first}-{fmt(100 if schedule.last is None else schedule.last)}% of the run"
    elif schedule.last is None:
        where = f"step {first} to the end"
    elif schedule.last == schedule.first:
        where = f"step {first}"
    else:
        where = f"steps {first}-{fmt(schedule.last)}"
    return f"{inner} on {where}, 0 elsewhere"
