"""7. GPU: the full Wan2.2 A14B expert in bf16 at 480×832×81 frames (32,760 tokens).

Seconds per forward with 0 LoRAs, 4 rank-64 LoRAs unfused (the studio's batched forward and
peft's own) and fused; the time to fuse/unfuse and to change weights; peak GPU memory; and
each forward against the compute lower bound (the blocks' matmul FLOPs at the GPU's dense
bf16 peak: 1.678 PFLOP / 989 TFLOP/s = 1.70 s on an H100 SXM).

Needs an NVIDIA GPU with CUDA and about 40 GB free (28.6 GB of weights, 2.5 GB of LoRAs,
activations). Runs unchanged on any CUDA machine: ``python -m bench.gpu``. Settings:
``BENCH_GPU_LAYERS`` (default 40), ``BENCH_GPU_FRAMES``/``HEIGHT``/``WIDTH`` (81/480/832),
``BENCH_GPU_REPEATS`` (3), ``BENCH_GPU_PEAK_TFLOPS`` (for a GPU not in the table below).
"""

from __future__ import annotations

import os
import sys

import torch

from bench import common
from bench.subjects import WAN22_A14B_CONFIG, forward_flops, forward_inputs, random_transformer, token_count

TITLE = "7. GPU: Wan2.2 A14B expert, bf16"
RANK, LORAS = 64, 4
# Dense bf16 tensor-core peaks (TFLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)


def gpu_subject() -> tuple[int, int, int, int]:
    """Layers, frames, height and width of the GPU subject (``BENCH_GPU_*``; default: the real 480p render)."""
    env = os.environ.get
    return (int(env("BENCH_GPU_LAYERS", "40")), int(env("BENCH_GPU_FRAMES", "81")),
            int(env("BENCH_GPU_HEIGHT", "480")), int(env("BENCH_GPU_WIDTH", "832")))  # fmt: skip


def peak_flops(name: str) -> float | None:
    if os.environ.get("BENCH_GPU_PEAK_TFLOPS"):
        return float(os.environ["BENCH_GPU_PEAK_TFLOPS"]) * 1e12
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def _lora_state_dict(config, seed: int) -> dict[str, torch.Tensor]:
    from studio.loras.synthetic import make_lora_tensors

    return make_lora_tensors(config, rank=RANK, layout="peft", seed=seed, scale=0.01, dtype=torch.bfloat16)


def main() -> None:
    if not torch.cuda.is_available():
        print(
            "bench.gpu needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here); "
            "run it on a CUDA machine: python -m bench.gpu",
            file=sys.stderr,
        )
        sys.exit(2)
    common.setup()
    from studio.engine import lora_ops

    layers, frames, height, width = gpu_subject()
    repeats = int(os.environ.get("BENCH_GPU_REPEATS", "3"))
    config = dict(WAN22_A14B_CONFIG, num_layers=layers)
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    tokens = token_count(config, latent)
    name = torch.cuda.get_device_name(0)
    peak = peak_flops(name)
    flops = forward_flops(config, tokens)
    bound_s = flops / peak if peak else float("nan")
    common.emit(common.machine_line())
    common.status(f"building the {layers}-layer expert in bf16 on {name}")
    model = random_transformer(config, dtype=torch.bfloat16, device="cuda")
    inputs = forward_inputs(config, latent=latent, dtype=torch.bfloat16, device="cuda")
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30

    def forward():
        with torch.no_grad():
            model(**inputs)

    def measure(label: str, warmup: int = 1) -> tuple[float, float]:
        for _ in range(warmup):
            forward()
        torch.cuda.reset_peak_memory_stats()
        seconds = common.median(common.samples(forward, repeats))
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        common.status(f"{label}: {seconds:.3f} s/forward, peak {peak_gib:.1f} GiB")
        return seconds, peak_gib

    results: dict[str, tuple[float, float]] = {}
    results["base (no LoRA)"] = measure("base")

    common.status(f"loading {LORAS} rank-{RANK} LoRAs (lora_ops.load_adapter, host → GPU)")
    names, load_s = [], []
    for i in range(LORAS):
        state = _lora_state_dict(config, seed=i + 1)
        adapter = f"lora{i}"
        load_s.append(
            common.timed(lambda state=state, adapter=adapter: lora_ops.load_adapter(model, state, adapter))
        )
        names.append(adapter)
        del state
    weights = dict.fromkeys(names, 1.0)
    change_s = common.median(common.samples(lambda: lora_ops.set_adapter_weights(model, weights), 20))
    results["4 unfused (lora_ops)"] = measure("4 unfused, lora_ops")
    lora_ops.disable_fast_forward(model)
    results["4 unfused (peft, as is)"] = measure("4 unfused, peft")
    lora_ops.enable_fast_forward(model)
    fuse_s = common.timed(lambda: lora_ops.fuse(model))
    results["4 fused"] = measure("4 fused")
    unfuse_s = common.timed(lambda: lora_ops.unfuse(model))
    diffusers_fuse_s = common.timed(lambda: model.fuse_lora())
    diffusers_unfuse_s = common.timed(lambda: model.unfuse_lora())

    base_s = results["base (no LoRA)"][0]
    rows = [
        [
            label,
            f"{seconds:.3f}",
            f"{(seconds / base_s - 1) * 100:+.1f}%",
            f"{peak_gib:.1f}",
            f"{seconds / bound_s:.2f}" if peak else "n/a",
        ]
        for label, (seconds, peak_gib) in results.items()
    ]
    text = common.table(
        TITLE
        + f" ({layers} layer{'s' if layers != 1 else ''}, {weights_gib:.1f} GiB of weights) at {width}×{height}×{frames} "
        + f"= {tokens} tokens on {name}; lower bound {flops / 1e15:.3f} PFLOP"
        + (f" / {peak / 1e12:.0f} TFLOP/s = {bound_s:.2f} s" if peak else " (peak unknown)")
        + f"; median of {repeats}",
        ["variant", "s / forward", "vs base", "peak GiB", "× lower bound"],
        rows,
    )
    ops = common.table(
        "7b. LoRA operations on the GPU expert",
        ["operation", "ms", "× base forward"],
        [
            [
                f"lora_ops.load_adapter (one rank-{RANK} LoRA, host → GPU)",
                common.ms(common.median(load_s)),
                common.median(load_s) / base_s,
            ],
            ["lora_ops.set_adapter_weights (4 LoRAs)", common.ms(change_s), change_s / base_s],
            ["lora_ops.fuse (4 LoRAs)", common.ms(fuse_s), fuse_s / base_s],
            ["lora_ops.unfuse", common.ms(unfuse_s), unfuse_s / base_s],
            ["diffusers fuse_lora", common.ms(diffusers_fuse_s), diffusers_fuse_s / base_s],
            ["diffusers unfuse_lora", common.ms(diffusers_unfuse_s), diffusers_unfuse_s / base_s],
        ],
    )
    common.emit(text)
    common.emit(ops)
    keys = {
        "gpu_base_s": base_s,
        "gpu_unfused4_s": results["4 unfused (lora_ops)"][0],
        "gpu_fused4_s": results["4 fused"][0],
        "gpu_raw_unfused4_s": results["4 unfused (peft, as is)"][0],
        "gpu_lower_bound_s": bound_s,
        "gpu_base_vs_bound": base_s / bound_s if peak else float("nan"),
        "gpu_unfused4_overhead": results["4 unfused (lora_ops)"][0] / base_s - 1,
        "gpu_fused_overhead": results["4 fused"][0] / base_s - 1,
        "gpu_fuse_ratio": fuse_s / base_s,
        "gpu_weight_change_ratio": change_s / base_s,
        "gpu_peak_gib": max(p for _, p in results.values()),
    }
    common.emit(common.kv_line(keys))


if __name__ == "__main__":
    main()
