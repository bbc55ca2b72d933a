"""Measure: one transformer forward with the stack on and off, timed on the loaded model.

Runs through the pipeline manager, under its lock (:meth:`PipelineManager.holding`): the
stack is applied unfused (a diff, as for a render), then for each expert the stack
touches, forwards at the render's size are timed in interleaved pairs — stack off (all
adapter scales 0: no reload), stack on — and the medians are reported with the change the
stack makes to that forward's output. The adapters' weights are set back afterwards.
Inputs are random latents and text embeddings of the render's shape (``[1, in_channels,
T', H/8, W/8]``, 512 text tokens): the cost of a forward does not depend on their values.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from studio.doctor.cost import ExpertTiming, Measured
from studio.engine import lora_ops
from studio.engine.manager import PipelineManager
from studio.stack.schema import RenderSettings, Stack

TEXT_TOKENS = 512  # what the Wan pipelines feed (max_sequence_length)


def forward_inputs(pipe, model, settings: RenderSettings, *, seed: int = 0) -> dict:
    """Random inputs of one denoising forward of ``model`` at the render's size."""
    config = model.config
    temporal = int(getattr(pipe, "vae_scale_factor_temporal", 4))
    spatial = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    frames = (settings.frames - 1) // temporal + 1
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(
        1,
        int(config.in_channels),
        frames,
        settings.height // spatial,
        settings.width // spatial,
        generator=gen,
    )
    text = torch.randn(1, TEXT_TOKENS, int(config.text_dim), generator=gen)
    device = getattr(pipe, "_execution_device", None) or next(model.parameters()).device
    dtype = model.dtype
    return {
        "hidden_states": latents.to(device=device, dtype=dtype),
        "timestep": torch.tensor([999], device=device),
        "encoder_hidden_states": text.to(device=device, dtype=dtype),
        "return_dict": False,
    }


def _timed(run) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure_forward(
    manager: PipelineManager, stack: Stack, settings: RenderSettings, *, repeats: int = 3
) -> Measured:
    """Time one forward per expert with ``stack`` on and off (``repeats`` pairs, medians)."""
    experts: list[ExpertTiming] = []
    with manager.holding(stack) as pipe, torch.no_grad():
        weights = manager.active_weights()
        for expert, component in manager.components().items():
            active = weights.get(component)
            if not active:
                continue
            model = getattr(pipe, component)
            inputs = forward_inputs(pipe, model, settings)
            tokens = int(inputs["hidden_states"][0, 0].numel()) // math.prod(model.config.patch_size)

            def run(model=model, inputs=inputs):
                return model(**inputs)[0]

            off_times, on_times = [], []
            try:
                _timed(run)  # warm-up (kernels, caches) with the stack on
                for _ in range(max(1, repeats)):
                    lora_ops.set_adapter_weights(model, {})
                    t_off, y_off = _timed(run)
                    lora_ops.set_adapter_weights(model, active)
                    t_on, y_on = _timed(run)
                    off_times.append(t_off)
                    on_times.append(t_on)
            finally:
                lora_ops.set_adapter_weights(model, active)
            base = float(torch.linalg.vector_norm(y_off.float()))
            change = float(torch.linalg.vector_norm((y_on - y_off).float())) / base if base > 0 else 0.0
            without, with_ = statistics.median(off_times), statistics.median(on_times)
            experts.append(
                ExpertTiming(
                    expert=expert,
                    tokens=tokens,
                    without_s=without,
                    with_s=with_,
                    overhead=with_ / without - 1.0 if without > 0 else 0.0,
                    output_change=change,
                    forwards=len(on_times),
                )
            )
        maybe_free = getattr(pipe, "maybe_free_model_hooks", None)
        if callable(maybe_free):
            maybe_free()
    total_off = sum(e.without_s for e in experts)
    total_on = sum(e.with_s for e in experts)
    return Measured(experts=experts, overhead=total_on / total_off - 1.0 if total_off > 0 else 0.0)
