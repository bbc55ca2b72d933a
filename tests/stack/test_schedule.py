"""Schedules: parsing, the text form, per-step evaluation and the expert split (pure, no model)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from studio.stack import schedule as S
from studio.stack.schedule import Constant, Ramp, Range, ScheduleError, StepList


@pytest.mark.parametrize(
    ("given", "steps", "expected"),
    [
        ("0.8", 4, (0.8, 0.8, 0.8, 0.8)),
        (0.8, 3, (0.8, 0.8, 0.8)),
        ("1,1,0.5,0", 4, (1.0, 1.0, 0.5, 0.0)),
        ([1, 0.5], 2, (1.0, 0.5)),
        ("1>0", 5, (1.0, 0.75, 0.5, 0.25, 0.0)),
        ("0>2", 3, (0.0, 1.0, 2.0)),
        ("1>0 cosine", 3, (1.0, 0.5, 0.0)),
        ("0.8@0-50%", 4, (0.8, 0.8, 0.0, 0.0)),
        ("0.8@50-100%", 4, (0.0, 0.0, 0.8, 0.8)),
        ("1@30%-", 10, (0, 0, 0, 1, 1, 1, 1, 1, 1, 1)),
        ("1@1-2", 4, (1.0, 1.0, 0.0, 0.0)),
        ("1@3-", 5, (0, 0, 1, 1, 1)),
        ("2@3", 4, (0, 0, 2, 0)),
        ("1>0@1-3", 4, (1.0, 0.5, 0.0, 0.0)),
        ("1>0@0-50%", 8, (1.0, 2 / 3, 1 / 3, 0.0, 0, 0, 0, 0)),
    ],
)
def test_each_form_gives_its_weights_per_step(given, steps, expected):
    weights = S.weights(S.parse(given), steps)
    assert len(weights) == steps
    assert weights == pytest.approx(expected, abs=1e-15)


def test_cosine_ramp_is_eased_and_symmetric():
    eased = S.weights(S.parse("1>0 cosine"), 9)
    linear = S.weights(S.parse("1>0"), 9)
    assert eased[0] == 1.0 and eased[-1] == 0.0 and eased[4] == pytest.approx(0.5)
    assert eased[1] > linear[1] and eased[7] < linear[7]  # slow at both ends
    for a, b in zip(eased, reversed(eased), strict=True):
        assert a + b == pytest.approx(1.0)


def test_constant_forms_are_exactly_the_plain_weight():
    plain = 0.7
    for form in ("0.7", "0.7>0.7", "0.7>0.7 cosine", "0.7,0.7,0.7,0.7", "0.7@0-100%", "0.7@1-4"):
        assert S.weights(S.parse(form), 4) == (plain,) * 4, form
    assert S.weights(S.parse("0.1>0.9"), 1) == (0.1,)


def test_percent_ranges_split_a_run_without_overlap_or_gap():
    for steps in (1, 3, 4, 7, 40):
        first = S.weights(S.parse("1@0-37.5%"), steps) if steps > 2 else None
        if first is not None:
            second = S.weights(S.parse("1@37.5-100%"), steps)
            assert [a + b for a, b in zip(first, second, strict=True)] == [1.0] * steps
    # step i of N starts at (i-1)/N: with 40 steps, 30% starts at step 13
    assert S.weights(S.parse("1@30-100%"), 40).index(1.0) == 12


@pytest.mark.parametrize(
    "given", ["0.8", "1,1,0.5,0", "1>0", "-1>0.25 cosine", "0.8@0-50%", "1@1-2", "1>0@25%-", "3@7", "1e-3"]
)
def test_text_form_reads_back_to_the_same_schedule(given):
    parsed = S.parse(given)
    assert S.parse(S.text(parsed)) == parsed


def test_text_form_is_short_and_canonical():
    assert S.text(S.parse(" 1.0 > 0.0   COS ")) == "1>0 cosine"
    assert S.text(S.parse("0.50,1.0")) == "0.5,1"
    assert S.text(S.parse("1 @ 1 - 2")) == "1@1-2"
    assert S.text(S.parse("0.8@0%-50%")) == "0.8@0-50%"
    assert S.text(S.parse(1)) == "1"
    assert S.fmt(0.1) == "0.1" and S.fmt(-0.0) == "0"


def test_structured_forms_parse_too():
    assert S.parse({"kind": "ramp", "start": 1, "end": 0}) == Ramp(start=1, end=0)
    assert S.parse([0.5]) == Constant(value=0.5)
    assert S.parse("1,") == Constant(value=1.0)
    assert isinstance(S.parse("1,2"), StepList)
    assert isinstance(S.parse("1@2"), Range)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("", "empty"),
        ("abc", "not a schedule"),
        ("1>x", "not a ramp"),
        ("1,a,2", "not a number"),
        ("11", "between -10 and 10"),
        ("1>20", "between -10 and 10"),
        ("1,2,99", "between -10 and 10"),
        ("1@0-2", "count from 1"),
        ("1@3-2", "ends before it starts"),
        ("1@50-20%", "empty"),
        ("1@0-150%", "0-100%"),
        ("1@1.5-2", "whole numbers"),
        ("1@x", "not a step range"),
        ("1,2@1-2", "not a list"),
        ("1@1@2", "only one @"),
        (True, "true/false"),
        (["a"], "numbers only"),
        ({"kind": "wobble"}, "not valid"),
        ("nan", "not a"),
    ],
)
def test_bad_schedules_get_a_sentence(given, words):
    with pytest.raises(ScheduleError, match=words):
        S.parse(given)


def test_step_dependent_checks_say_what_to_do():
    with pytest.raises(
        ScheduleError, match=r"3 weights but the render has 4 steps; give one weight per step"
    ):
        S.weights(S.parse("1,1,0"), 4)
    with pytest.raises(ScheduleError, match=r"range 3-6 goes past the last step \(the render has 4 steps\)"):
        S.weights(S.parse("1@3-6"), 4)
    with pytest.raises(ScheduleError, match=r"holds none of the 4 steps; widen it"):
        S.weights(S.parse("1@10-20%"), 4)
    with pytest.raises(ScheduleError, match="at least one step"):
        S.weights(S.parse("1"), 0)


def test_summaries_of_a_schedule():
    assert S.first_weight(S.parse("0.3@0-50%")) == 0.3
    assert S.first_weight(S.parse("0.3@50-100%")) == 0.0
    assert S.first_weight(S.parse("1>0@1-2")) == 1.0
    assert S.first_weight(S.parse("0.2,1")) == 0.2
    assert (
        S.can_apply(S.parse("0,0,1"))
        and not S.can_apply(S.parse("0>0"))
        and not S.can_apply(S.parse("0@1-2"))
    )
    assert S.peak(S.parse("0.5>-2")) == -2.0
    assert S.describe(S.parse("1>0 cosine")) == "ramp 1 → 0 (cosine)"
    assert S.describe(S.parse("0.8@0-50%")) == "0.8 on 0-50% of the run, 0 elsewhere"
    assert S.describe(S.parse("1@3-")) == "1 on step 3 to the end, 0 elsewhere"
    assert S.is_constant(S.parse("2")) and not S.is_constant(S.parse("2,2"))


class _Holder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule: S.Schedule | None = None


def test_the_field_type_reads_text_and_writes_text():
    holder = _Holder.model_validate({"schedule": "1 > 0"})
    assert holder.schedule == Ramp(start=1.0, end=0.0)
    assert holder.model_dump(mode="json") == {"schedule": "1>0"}
    assert _Holder.model_validate_json(holder.model_dump_json()) == holder
    with pytest.raises(PydanticValidationError, match="not a ramp"):
        _Holder.model_validate({"schedule": "1>"})
