"""``python -m studio vram``: how much VRAM and RAM a render needs, before running it.

    python -m studio vram --model wan2.2-i2v-a14b --width 832 --height 480 --frames 81 \\
        --mode model-offload --precision bf16 --lora my_lora.safetensors:1.0:0.5 --gpu-gb 24

prints the estimate as a table (what is on the GPU at the peak, each phase's peak,
host RAM) with a verdict against the GPU (the detected one, or ``--gpu-gb``);
``--json`` prints the same as JSON (``peak_vram_bytes``, ``peak_ram_bytes``,
``breakdown`` ...). LoRA ranks and targeted modules are read from the files' headers.
Errors print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from studio.cli.common import EXIT_USER_ERROR
from studio.errors import StudioError, ValidationError

GiB = 1 << 30

_NAMES = {
    "text_encoder_weights": "text encoder weights",
    "expert_high_weights": "high-noise expert weights",
    "expert_low_weights": "low-noise expert weights",
    "expert_weights": "expert weights",
    "lora_weights_high": "LoRA weights (high-noise expert)",
    "lora_weights_low": "LoRA weights (low-noise expert)",
    "vae_weights": "VAE weights",
    "activations": "activations (one forward)",
    "latents": "latents, condition, predictions, text embeddings",
    "text_embeddings": "text embeddings",
    "text_encoder_activations": "text encoder activations",
    "vae_encode_working": "VAE encode (working set + caches)",
    "condition_video": "condition video",
    "vae_decode_working": "VAE decode (working set + caches + frames)",
    "latents_for_decode": "latents to decode",
    "cuda_context": "CUDA context",
    "process": "Python process",
    "weights_while_loading": "weights while loading",
    "offloaded_weights": "offloaded weights",
    "pinned_copy_while_setting_up": "pinned copy while setting up",
    "fuse_backups": "fuse backups (exact unfuse)",
    "decoded_frames": "decoded frames",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``vram`` subcommand to ``subparsers`` (from ``parser.add_subparsers()``)."""
    from studio.vram.types import MEMORY_MODES

    p = subparsers.add_parser(
        "vram",
        help="estimate the VRAM and host RAM a render needs (no GPU or download needed)",
        description="Estimate the peak VRAM and host RAM of a render, with a breakdown and a verdict.",
    )
    p.add_argument(
        "--model", default=None, help="wan2.2-i2v-a14b (default), wan2.2-ti2v-5b, demo or a folder"
    )
    p.add_argument("--width", type=int, help="default: the model's")
    p.add_argument("--height", type=int, help="default: the model's")
    p.add_argument("--frames", type=int, help="4k+1; default: the model's")
    p.add_argument(
        "--mode", choices=MEMORY_MODES, default="model-offload", help="memory mode (default: %(default)s)"
    )
    p.add_argument(
        "--precision",
        choices=("bf16", "fp8"),
        default="bf16",
        help="transformer storage: bf16, or fp8 layerwise storage (default: %(default)s)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:HIGH[:LOW]]",
        help="a LoRA and its high-/low-noise weights (repeatable; 0 = not loaded into that expert)",
    )
    p.add_argument("--fuse", action="store_true", help="the LoRAs are fused into the weights")
    p.add_argument(
        "--gpu-gb",
        type=float,
        default=None,
        help="the card's memory as sold (read as GiB: 24 for a 24 GB card); default: the detected GPU",
    )
    p.add_argument(
        "--cfg", action=argparse.BooleanOptionalAction, default=True, help="guidance > 1 (default: on)"
    )
    p.add_argument("--vae-tiling", action="store_true", help="decode (and encode) the VAE in tiles")
    p.add_argument("--suggest", action="store_true", help="also say the fastest setup that fits the GPU")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_vram)
    return p


def _loras(args, experts: int) -> list:
    from studio.cli.common import parse_lora_arg
    from studio.loras.inspect import inspect_lora
    from studio.vram.types import LoraLoad

    loads = []
    for text in args.lora:
        path, high, low = parse_lora_arg(text)
        if not path.is_file():
            raise ValidationError(f"--lora {text!r}: the file {path} does not exist.")
        if experts == 1:
            targets = ("high",) if (high or low) else ()
        else:
            targets = tuple(e for e, w in (("high", high), ("low", low)) if w != 0)
        if not targets:
            continue
        info = inspect_lora(path, hash_file=False)
        loads.append(LoraLoad.from_info(info, experts=targets, fused=args.fuse))
    return loads


def _gpu(args) -> tuple[int | None, str]:
    """(card bytes, description) from --gpu-gb or NVML."""
    if args.gpu_gb is not None:
        if args.gpu_gb <= 0:
            raise ValidationError(f"--gpu-gb must be positive (got {args.gpu_gb:g}).")
        card = int(args.gpu_gb * GiB)
        return card, f"--gpu-gb {args.gpu_gb:g} ({card / 1e9:.1f} GB)"
    from studio.vram.nvml import gpu_status

    status = gpu_status()
    if not status.gpus:
        return None, f"{status.message}; pass --gpu-gb to compare"
    gpu = status.gpus[0]
    more = f" (GPU 0 of {len(status.gpus)})" if len(status.gpus) > 1 else ""
    return (
        gpu.total_bytes,
        f"{gpu.name}{more}: {gpu.total_bytes / 1e9:.1f} GB, {gpu.free_bytes / 1e9:.1f} GB free",
    )


def _gb(n: int | float) -> str:
    return f"{n / 1e9:8.2f}"


def _table(est, spec, card: int | None, gpu_text: str, suggestion) -> str:
    from studio.vram.suggest import MODE_LABELS
    from studio.vram.types import PHASE_LABELS

    r = est.request
    lines = [
        f"{spec.label}",
        f"{r['width']}×{r['height']}, {r['frames']} frames ({est.tokens:,} tokens), {MODE_LABELS[r['mode']]}, "
        f"{r['precision']}, CFG {'on' if r['cfg'] else 'off'}, VAE tiling {'on' if r['vae_tiling'] else 'off'}",
    ]
    if r["loras"]:
        ranks = ", ".join(str(lr["rank"]) for lr in r["loras"])
        lines.append(
            f"LoRAs: {len(r['loras'])} (rank {ranks}){', fused' if any(lr['fused'] for lr in r['loras']) else ''}"
        )
    lines.append("")
    lines.append(f"Peak VRAM {_gb(est.peak_vram_bytes)} GB  while {PHASE_LABELS[est.peak_phase]}")
    if card is not None:
        lines.append(f"GPU       {gpu_text} → {est.fits(card)}")
    else:
        lines.append(f"GPU       {gpu_text}")
    lines.append(f"Peak RAM  {_gb(est.peak_ram_bytes)} GB")
    lines.append("")
    width = max(len(_NAMES.get(k, k)) for k in [*est.breakdown, *est.ram_breakdown]) + 2
    width = max(width, max(len(v) for v in PHASE_LABELS.values()) + 2)
    lines.append(f"{'On the GPU at the peak':<{width}}      GB")
    for key, value in est.breakdown.items():
        lines.append(f"  {_NAMES.get(key, key):<{width - 2}}{_gb(value)}")
    lines.append(f"  {'total':<{width - 2}}{_gb(est.peak_vram_bytes)}")
    lines.append("")
    lines.append(f"{'Peak of each phase':<{width}}      GB")
    for phase, value in est.phase_peaks.items():
        lines.append(f"  {PHASE_LABELS.get(phase, phase):<{width - 2}}{_gb(value)}")
    lines.append("")
    lines.append(f"{'Host RAM':<{width}}      GB")
    for key, value in est.ram_breakdown.items():
        lines.append(f"  {_NAMES.get(key, key):<{width - 2}}{_gb(value)}")
    if suggestion is not None:
        lines += ["", f"Suggestion: {suggestion.reason}"]
    if est.notes:
        lines.append("")
        lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def cmd_vram(args) -> int:
    """Run ``vram``; prints the estimate; user errors print ``error: ...`` and return 2."""
    try:
        return _run(args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _run(args) -> int:
    from studio.models.registry import resolve_model
    from studio.vram.estimate import estimate
    from studio.vram.suggest import suggest

    spec = resolve_model(args.model or "wan2.2-i2v-a14b")
    d = spec.defaults
    width = args.width if args.width is not None else d.width
    height = args.height if args.height is not None else d.height
    frames = args.frames if args.frames is not None else d.frames
    loras = _loras(args, spec.experts)
    est = estimate(
        spec,
        width=width,
        height=height,
        frames=frames,
        mode=args.mode,
        precision=args.precision,
        loras=loras,
        cfg=args.cfg,
        vae_tiling=args.vae_tiling,
    )
    card, gpu_text = _gpu(args)
    suggestion = None
    if args.suggest and card is not None:
        suggestion = suggest(
            spec, card, width=width, height=height, frames=frames, loras=loras, cfg=args.cfg,
            vae_tiling=args.vae_tiling,
        )  # fmt: skip
    if args.json:
        data: dict[str, Any] = est.to_dict()
        data["gpu"] = {"bytes": card, "description": gpu_text, "verdict": est.fits(card) if card else None}
        if suggestion is not None:
            data["suggestion"] = suggestion.to_dict()
        print(json.dumps(data, indent=2))
    else:
        print(_table(est, spec, card, gpu_text, suggestion))
    return 0
