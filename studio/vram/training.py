"""VRAM of a LoRA training run, before it starts (pure: no GPU, no model load).

What is on the GPU during one optimizer step of one expert:

*Weights*: with ``gpu`` everything stays resident (text encoder, both experts, VAE); with
``model-offload`` the trainer frees the pipeline's hooks after each step, so only the
expert being trained is on the GPU (in its storage precision; ``fp8`` adds the bf16 upcast
of the largest Linear, as for renders). ``group-offload`` and ``sequential`` are not
supported for training (backward needs the weights again).

*The LoRA*: ``rank·(in+out)`` parameters per targeted Linear of every block, kept in
float32 (the master weights) — the factors, their gradients, and AdamW's two moments. The
moments of every trained expert stay on the GPU (they do not move with offloaded weights).

*Activations*: what autograd saves for the backward pass of each block, counted per block
from a replay of real forwards (the saved tensors of ``WanTransformerBlock`` with LoRA
layers, measured on CPU by ``tests/vram/test_training.py``): in bf16 about
``20.1·X + 2.68·T·ffn + 9.0·text·dim`` elements of 2 bytes per block (``X = T·dim`` for
``T`` video tokens; many are fp32 copies around the norms), in float32
``14.0·X + 2.68·T·ffn + 8.15·text·dim`` of 4 bytes. Without gradient checkpointing every
block keeps them; with it each block keeps only its input (``X``) and one block at a time
recomputes the rest during backward. On top: the working set of one block's forward (the
inference replay of :mod:`studio.vram.activations`), the batch's latents, condition, noise
and text embeddings, and the CUDA context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from studio.errors import ValidationError
from studio.models.shapes import shapes_for, text_encoder_weights, transformer_weights, vae_weights
from studio.vram.activations import BlockShape, diffusers_forward
from studio.vram.lora_weights import lora_bytes
from studio.vram.types import CUDA_CONTEXT_BYTES, DEFAULT_LORA_KINDS, TIGHT_MARGIN, LoraLoad

TRAINING_MODES = ("gpu", "model-offload")
# Saved-for-backward elements per block: (per video token·dim, per token·ffn, per text token·dim).
SAVED = {2: (20.1, 2.68, 9.0), 4: (14.0, 2.68, 8.15)}
CHECKPOINT_SAVED = 1.0  # a checkpointed block keeps its input hidden states


@dataclass(frozen=True)
class TrainingEstimate:
    peak_vram_bytes: int
    breakdown: dict[str, int]
    notes: list[str]
    request: dict[str, Any]
    tokens: int

    def fits(self, gpu_bytes: float) -> str:
        if gpu_bytes <= 0 or self.peak_vram_bytes > gpu_bytes:
            return "won't fit"
        return "fits" if self.peak_vram_bytes <= (1 - TIGHT_MARGIN) * gpu_bytes else "tight"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def saved_activation_bytes(
    *, tokens: int, dim: int, ffn: int, text_tokens: int, blocks: int, c: int, checkpointing: bool
) -> float:
    """Bytes autograd keeps for backward over all blocks at the peak of the backward pass."""
    per_x, per_ffn, per_text = SAVED[c]
    block = (per_x * tokens * dim + per_ffn * tokens * ffn + per_text * text_tokens * dim) * c
    if not checkpointing:
        return blocks * block
    return blocks * CHECKPOINT_SAVED * tokens * dim * c + block


def estimate_training(
    model: Any,
    *,
    width: int,
    height: int,
    frames: int,
    rank: int,
    experts: Iterable[str] = ("high", "low"),
    batch: int = 1,
    module_kinds: Iterable[str] = DEFAULT_LORA_KINDS,
    gradient_checkpointing: bool = True,
    mode: str = "model-offload",
    precision: str = "bf16",
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
) -> TrainingEstimate:
    """Peak VRAM of training a rank-``rank`` LoRA at ``width``×``height``×``frames`` with ``batch`` clips."""
    if mode not in TRAINING_MODES:
        raise ValidationError(
            f"Training runs with the gpu or model-offload memory mode, not {mode!r} (backward needs the "
            "weights that offloading moves away); choose model-offload on cards below 80 GB."
        )
    shapes = shapes_for(model)
    experts = tuple(experts)
    if not experts or set(experts) - {"high", "low"}:
        raise ValidationError("Train 'high', 'low' or both experts.")
    if (frames - 1) % 4 or width % 16 or height % 16:
        raise ValidationError("Training frames must be 4k+1 and the size a multiple of 16.")
    c = 4 if shapes.weights_dtype == "float32" else 2
    storage = {"bf16": "fp32" if c == 4 else "bf16", "fp8": "fp8"}.get(precision)
    if storage is None:
        raise ValidationError(f"Unknown precision {precision!r}: use bf16 or fp8.")
    cfg = shapes.transformer
    tw = transformer_weights(cfg)
    dim, ffn, blocks = shapes.dim, int(cfg["ffn_dim"]), tw.blocks
    tokens = shapes.tokens(width, height, frames) * batch
    kinds = tuple(module_kinds)
    lora_params = lora_bytes(
        shapes, LoraLoad(rank=rank, module_kinds=kinds, experts=("high",)), element_size=1
    )

    parts: dict[str, float] = {}
    base = "fp32" if c == 4 else "bf16"
    if mode == "gpu":
        parts["text_encoder_weights"] = text_encoder_weights(shapes.text_encoder).bytes(base)
        parts["expert_weights"] = tw.bytes(storage) * shapes.experts
        parts["vae_weights"] = vae_weights(shapes.vae).bytes(base)
    else:
        parts["expert_weights"] = tw.bytes(storage)
    if precision == "fp8":
        lin_in, lin_out = tw.largest_linear
        parts["fp8_upcast"] = lin_in * lin_out * 2
    resident_loras = len(experts) if mode == "gpu" else 1
    parts["lora_weights"] = lora_params * 4 * resident_loras  # float32 master weights
    parts["lora_gradients"] = lora_params * 4
    parts["optimizer_state"] = lora_params * 4 * 2 * len(experts)  # AdamW exp_avg + exp_avg_sq
    parts["activations_saved"] = saved_activation_bytes(
        tokens=tokens, dim=dim, ffn=ffn, text_tokens=shapes.text_len * batch, blocks=blocks, c=c,
        checkpointing=gradient_checkpointing,
    )  # fmt: skip
    block = BlockShape(
        tokens=tokens, batch=batch, dim=dim, ffn=ffn, heads=int(cfg["num_attention_heads"]),
        head_dim=int(cfg["attention_head_dim"]), text_tokens=shapes.text_len,
        out_features=int(cfg.get("out_channels", 16)) * math.prod(shapes.patch), c=c,
        per_token_mod=shapes.expand_timesteps, lora={k: rank for k in kinds},
    )  # fmt: skip
    parts["activations_working"] = diffusers_forward(block)[0]
    cell = (
        shapes.latent_frames(frames) * (height // shapes.vae_spatial) * (width // shapes.vae_spatial) * batch
    )
    in_ch = int(cfg.get("in_channels", 36))
    text_dim = int(shapes.text_encoder["d_model"])
    parts["batch_tensors"] = (
        cell * (in_ch + 2 * shapes.latent_channels) * 4 + batch * shapes.text_len * text_dim * 4
    )
    parts["cuda_context"] = cuda_context_bytes
    breakdown = {k: round(v) for k, v in parts.items() if round(v) > 0}
    notes = []
    if not gradient_checkpointing:
        ckpt = saved_activation_bytes(
            tokens=tokens, dim=dim, ffn=ffn, text_tokens=shapes.text_len * batch, blocks=blocks, c=c,
            checkpointing=True,
        )  # fmt: skip
        notes.append(
            f"Gradient checkpointing would need {(parts['activations_saved'] - ckpt) / 1e9:.1f} GB less "
            "(about a third slower per step)."
        )
    if mode == "model-offload" and len(experts) == 2:
        notes.append(
            "model-offload moves each expert to the GPU for its step: slower steps, one expert resident."
        )
    request = dict(
        model=shapes.name, width=width, height=height, frames=frames, rank=rank, experts=list(experts),
        batch=batch, module_kinds=list(kinds), gradient_checkpointing=gradient_checkpointing, mode=mode,
        precision=precision,
    )  # fmt: skip
    return TrainingEstimate(
        peak_vram_bytes=sum(breakdown.values()),
        breakdown=breakdown,
        notes=notes,
        request=request,
        tokens=tokens,
    )
