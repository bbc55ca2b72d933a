"""WanGP's multipliers string → the same per-step weights per expert (pure parsing)."""

from __future__ import annotations

import pytest

from studio.errors import ValidationError
from studio.stack import schedule as S
from studio.workflows.presets.lset import Multiplier, expand, expert_schedules, parse_multipliers


def _wangp_expand_one(slist, num_inference_steps):
    """WanGP's own block expansion (shared/utils/loras_mutipliers.py), restated for comparison."""
    if not isinstance(slist, list):
        slist = [slist]
    new_slist = []
    inc = len(slist) / num_inference_steps
    pos = 0
    for _ in range(num_inference_steps):
        new_slist.append(slist[int(pos)])
        pos += inc
    return new_slist


@pytest.mark.parametrize(
    ("values", "count"), [((0.9, 0.8), 4), ((1.2, 1.1, 1.0), 9), ((1, 2, 3), 7), ((5,), 3)]
)
def test_blocks_are_cut_as_wangp_cuts_them(values, count):
    assert expand(values, count) == _wangp_expand_one(list(values), count)


def test_two_loras_two_phases_and_a_per_step_list():
    names = ["a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors"]
    text = "# accelerators first\n1;0 0;1\n0.9,0.8;1.2,1.1,1 | 0.8,0.7,0.5"
    multipliers, notes = parse_multipliers(text, names)
    assert notes == []
    assert multipliers[0] == Multiplier((1.0, 0.0)) and multipliers[1] == Multiplier((0.0, 1.0))
    steps, high = 6, 2
    # 1;0 → 1 on the high-noise expert, 0 on the low-noise one (constants: any step count)
    assert expert_schedules(multipliers[0], steps=steps, high_steps=high) == ("1", "0")
    assert expert_schedules(multipliers[1], steps=steps, high_steps=high) == ("0", "1")
    # 0.9,0.8;1.2,1.1,1 → 0.9, 0.8 over the high steps, 1.2, 1.1, 1 over the low steps
    hi, lo = expert_schedules(multipliers[2], steps=steps, high_steps=high)
    assert S.weights(S.parse(hi), steps)[:high] == (0.9, 0.8)
    assert S.weights(S.parse(lo), steps)[high:] == (1.2, 1.2, 1.1, 1.0)  # 3 values held over 4 steps
    assert tuple(_wangp_expand_one([1.2, 1.1, 1.0], steps - high)) == (1.2, 1.2, 1.1, 1.0)
    # a list without ';' spans the whole run, on both experts: steps 1-2 0.8, 3-4 0.7, 5-6 0.5 (LORAS.md)
    both = expert_schedules(multipliers[3], steps=steps, high_steps=high)
    assert both[0] == both[1] and S.weights(S.parse(both[0]), steps) == (0.8, 0.8, 0.7, 0.7, 0.5, 0.5)


def test_missing_values_are_one_and_extra_values_get_a_note():
    multipliers, notes = parse_multipliers("0.5", ["a", "b"])
    assert [m.phases for m in multipliers] == [(0.5,), (1.0,)]
    _, notes = parse_multipliers("1 1 1", ["a"])
    assert "extra ones were ignored" in notes[0]
    multipliers, _ = parse_multipliers(["0.7", 2], ["a", "b"])
    assert [m.phases for m in multipliers] == [(0.7,), (2.0,)]


@pytest.mark.parametrize(
    ("text", "words"),
    [("1;0;1", "3 phases"), ("x", "not a number"), ("1,y;1", "not a number"), ("20", "between -10 and 10")],
)
def test_bad_multipliers_name_the_lora(text, words):
    with pytest.raises(ValidationError, match=rf"Multiplier 1 \(for style.safetensors\).*{words}"):
        parse_multipliers(text, ["style.safetensors"])
