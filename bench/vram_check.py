"""VRAM estimate vs measurement (issue 5): one Wan2.2 A14B expert forward on an NVIDIA GPU.

Builds the real-shape expert (40 layers, random bf16 weights) on the GPU, runs one denoising
forward at the requested size, and compares ``torch.cuda.max_memory_allocated`` with the
estimator's figure for the same thing: the expert's weights + one forward's activations +
latents, as :func:`studio.vram.estimate` breaks them down for the high-noise phase
(mode ``gpu`` so nothing is offloaded mid-forward). Target: measured/estimated within ±10%.

Needs CUDA and about 40 GB free: ``python -m bench.vram_check`` (exits with code 2 elsewhere).
Settings: ``BENCH_GPU_LAYERS`` (40), ``BENCH_GPU_FRAMES``/``HEIGHT``/``WIDTH`` (81/480/832).
"""

from __future__ import annotations

import sys

import torch

from bench import common
from bench.gpu import gpu_subject
from bench.subjects import WAN22_A14B_CONFIG, forward_inputs, random_transformer

TITLE = "VRAM: estimate vs torch.cuda.max_memory_allocated (A14B expert, one forward)"
PARTS = ("expert_high_weights", "activations", "latents")


def main() -> None:
    if not torch.cuda.is_available():
        print("bench.vram_check needs an NVIDIA GPU with CUDA; run it on a CUDA machine.", file=sys.stderr)
        sys.exit(2)
    common.setup()
    from dataclasses import replace

    from studio.models.shapes import shapes_for
    from studio.vram.estimate import estimate

    layers, frames, height, width = gpu_subject()
    config = dict(WAN22_A14B_CONFIG, num_layers=layers)
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)

    common.emit(common.machine_line())
    torch.cuda.reset_peak_memory_stats()
    model = random_transformer(config, dtype=torch.bfloat16, device="cuda")
    inputs = forward_inputs(config, latent=latent, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        model(**inputs)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()

    shapes = replace(shapes_for("wan2.2-i2v-a14b"), transformer=config)
    est = estimate(shapes, width=width, height=height, frames=frames, mode="gpu", cfg=False)
    phase = est.phases["denoise_high"]
    estimated = sum(phase.get(key, 0) for key in PARTS)
    rows = [[key, f"{phase.get(key, 0) / 2**30:.2f}"] for key in PARTS]
    rows.append(["estimated (sum)", f"{estimated / 2**30:.2f}"])
    rows.append(["measured peak", f"{measured / 2**30:.2f}"])
    common.emit(common.table(TITLE, ["part", "GiB"], rows))
    common.emit(
        common.kv_line(
            {"vram_measured_over_estimated": measured / estimated, "vram_measured_gib": measured / 2**30}
        )
    )


if __name__ == "__main__":
    main()
