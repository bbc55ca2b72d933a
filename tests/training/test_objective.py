"""The flow-matching maths: the shift, each expert's timestep range, the noisy input and the target."""

from __future__ import annotations

import torch

from studio.training.objective import (
    fixed_timesteps,
    flow_target,
    noisy_latents,
    sample_timesteps,
    shift_sigma,
    unshift_sigma,
)


def test_shift_and_its_inverse():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (1.0, 3.0, 5.0, 12.0):
        sigma = shift_sigma(s, shift)
        back = torch.tensor([unshift_sigma(float(x), shift) for x in sigma], dtype=torch.float64)
        assert torch.allclose(back, s, atol=1e-12)
    assert shift_sigma(0.5, 5.0) == 5 * 0.5 / (1 + 4 * 0.5)


def test_each_expert_samples_only_its_side_at_the_i2v_boundary():
    g = torch.Generator().manual_seed(0)
    high = sample_timesteps(20_000, "high", 0.9, 5.0, g)
    low = sample_timesteps(20_000, "low", 0.9, 5.0, g)
    assert high.dtype == low.dtype == torch.float32
    assert bool((high >= 900.0).all()) and bool((high <= 1000.0).all())
    assert bool((low < 900.0).all()) and bool((low >= 0.0).all())
    # The pipeline's own comparison (t >= boundary_ratio * 1000) routes each one the same way.
    assert bool((high >= 0.9 * 1000).all()) and not bool((low >= 0.9 * 1000).any())


def test_the_ranges_follow_the_shifted_schedule():
    """Drawing in an expert's range = drawing over everything (shifted) and keeping that range."""
    g = torch.Generator().manual_seed(1)
    everything = shift_sigma(torch.rand(200_000, generator=g, dtype=torch.float64), 5.0) * 1000
    kept = everything[everything < 875.0]
    low = sample_timesteps(50_000, "low", 0.875, 5.0, g).double()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(torch.quantile(low, q) - torch.quantile(kept, q)) < 8.0, q
    share_high = float((everything >= 875.0).double().mean())
    assert abs(share_high - (1 - unshift_sigma(0.875, 5.0))) < 0.01


def test_fixed_validation_timesteps_spread_over_the_range():
    ts = fixed_timesteps(4, "high", 0.9, 5.0)
    assert ts.shape == (4,) and bool((ts >= 900).all()) and bool((ts[1:] > ts[:-1]).all())
    assert torch.equal(ts, fixed_timesteps(4, "high", 0.9, 5.0))
    low = fixed_timesteps(4, "low", 0.9, 5.0)
    assert bool((low < 900).all()) and float(low[0]) > 0


def test_noisy_input_and_velocity_target():
    x0, noise = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    t = torch.tensor([250.0, 1000.0])
    x_t = noisy_latents(x0, noise, t)
    assert torch.allclose(x_t[0], torch.full((3,), 0.75 * 2 + 0.25 * -1))
    assert torch.equal(x_t[1], noise[1])
    assert torch.equal(flow_target(x0, noise), noise - x0)
