"""Wan's flow-matching objective, per expert.

A training example is a clip's latents ``x0`` and noise ``ε``; at noise level ``σ``::

    x_t = (1 − σ)·x0 + σ·ε          the transformer's input (with the I2V condition)
    target = ε − x0                  what it must predict (the flow velocity)
    t = 1000·σ                       the timestep it is told

``σ`` is drawn by shifting a uniform ``s`` the way the model's scheduler shifts its sigmas,
``σ = shift·s / (1 + (shift − 1)·s)``. Wan2.2 A14B denoises ``t ≥ boundary·1000`` with the
high-noise expert and the rest with the low-noise one, so each expert trains only on its own
range: ``s`` is drawn uniformly from the part of [0, 1) that maps into that range (the same
distribution as drawing over everything and keeping what falls in the range), and ``t`` is
clamped in float32 so that rounding never puts a sample on the wrong side of the boundary.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(s: torch.Tensor | float, shift: float):
    return shift * s / (1 + (shift - 1) * s)


def unshift_sigma(sigma: float, shift: float) -> float:
    """The uniform ``s`` whose shifted sigma is ``sigma`` (the inverse of :func:`shift_sigma`)."""
    return sigma / (shift - (shift - 1) * sigma)


def expert_range(expert: str, boundary: float | None) -> tuple[float, float]:
    """The expert's sigma range ``[low, high)``; the whole range for a one-expert run."""
    if boundary is None:
        return 0.0, 1.0
    return (boundary, 1.0) if expert == "high" else (0.0, boundary)


def clamp_timesteps(t: torch.Tensor, expert: str, boundary: float | None) -> torch.Tensor:
    """Float32 timesteps kept strictly on the expert's side of ``boundary·1000`` (as the pipeline compares)."""
    t = t.to(torch.float32)
    if boundary is None:
        return t
    edge = torch.tensor(boundary * NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    if expert == "high":
        return torch.maximum(t, edge)
    below = torch.nextafter(edge, torch.tensor(0.0, dtype=torch.float32))
    return torch.minimum(t, below)


def sample_timesteps(
    n: int, expert: str, boundary: float | None, shift: float, generator: torch.Generator
) -> torch.Tensor:
    """``n`` float32 timesteps in the expert's range, distributed as the shifted schedule."""
    lo, hi = expert_range(expert, boundary)
    s_lo, s_hi = unshift_sigma(lo, shift), unshift_sigma(hi, shift)
    s = s_lo + (s_hi - s_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    t = shift_sigma(s, shift) * NUM_TRAIN_TIMESTEPS
    return clamp_timesteps(t, expert, boundary)


def fixed_timesteps(k: int, expert: str, boundary: float | None, shift: float) -> torch.Tensor:
    """``k`` evenly spread timesteps of the expert's range (for a validation loss that does not wander)."""
    lo, hi = expert_range(expert, boundary)
    s_lo, s_hi = unshift_sigma(lo, shift), unshift_sigma(hi, shift)
    s = torch.tensor([s_lo + (s_hi - s_lo) * (j + 0.5) / k for j in range(k)], dtype=torch.float64)
    return clamp_timesteps(shift_sigma(s, shift) * NUM_TRAIN_TIMESTEPS, expert, boundary)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    sigma = (t.to(torch.float32) / NUM_TRAIN_TIMESTEPS).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - sigma) * x0 + sigma * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_loss(
    transformer,
    x0: torch.Tensor,
    condition: torch.Tensor,
    text: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """The mean squared error of the transformer's velocity on one batch (float32)."""
    dtype = transformer.dtype
    x_t = noisy_latents(x0, noise, t)
    model_input = torch.cat([x_t, condition], dim=1).to(dtype)
    prediction = transformer(
        hidden_states=model_input,
        timestep=t.to(x0.device),
        encoder_hidden_states=text.to(dtype),
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(prediction.float(), flow_target(x0, noise).float())
