"""The expert split: which expert runs each step, from the real scheduler timesteps."""

from __future__ import annotations

import math

import pytest

from studio.engine.split import boundary_for_high_steps, expert_split, split_steps, timesteps
from studio.stack.schedule import ScheduleError


def test_split_follows_the_boundary_as_the_wan_loop_does():
    ts = [999, 937, 833, 625]
    assert split_steps(ts, 900.0) == ["high", "high", "low", "low"]
    assert split_steps(ts, 937.0) == ["high", "high", "low", "low"]  # t >= boundary is high
    assert split_steps(ts, None) == ["high"] * 4
    assert split_steps(ts, 900.0, high_steps=3) == ["high", "high", "high", "low"]
    with pytest.raises(ScheduleError, match="between 0 and 4"):
        split_steps(ts, 900.0, high_steps=5)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_boundary_for_k_high_steps_gives_exactly_k(k):
    ts = [999, 937, 833, 625]
    ratio = boundary_for_high_steps(ts, k, 1000)
    assert split_steps(ts, ratio * 1000) == ["high"] * k + ["low"] * (4 - k)


def test_boundary_refuses_a_switch_between_equal_timesteps():
    with pytest.raises(ScheduleError, match="share the timestep"):
        boundary_for_high_steps([999, 999, 500], 1, 1000)


def test_split_from_the_real_scheduler_timesteps():
    config = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000}
    assert timesteps(config, 4, 5.0) == (999, 937, 833, 625)  # DESIGN §3: UniPC, shift 5, 4 steps
    split = expert_split(config, steps=4, shift=5.0, boundary_ratio=0.9)
    assert split.experts == ("high", "high", "low", "low") and split.boundary_ratio == 0.9
    assert split.label() == "2 high-noise + 2 low-noise steps"
    # A lower shift moves the timesteps down, so fewer steps stay on the high-noise expert.
    assert (
        expert_split(config, steps=40, shift=1.0, boundary_ratio=0.9).high_count
        < expert_split(config, steps=40, shift=5.0, boundary_ratio=0.9).high_count
    )
    chosen = expert_split(config, steps=4, shift=5.0, boundary_ratio=0.9, high_steps=1)
    assert chosen.experts == ("high", "low", "low", "low") and chosen.high_steps == 1
    assert chosen.steps_of("low") == [1, 2, 3]
    one = expert_split(config, steps=4, shift=5.0, boundary_ratio=None, high_steps=1)
    assert one.experts == ("high",) * 4 and one.label() == "4 steps on one expert"
    assert not math.isnan(chosen.boundary_ratio)
