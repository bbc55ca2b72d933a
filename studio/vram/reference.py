"""The ``wan-reference`` runtime profile: the official Wan2.2 code's memory use (fp32 residual and
modulation tensors), the one the published peak table was measured with.
"""

from __future__ import annotations

import math

from studio.models.shapes import (
    ModelShapes,
    text_encoder_weights,
    transformer_weights,
    vae_weights,
)
from studio.vram.activations import BlockShape, reference_forward, text_encoder_activations
from studio.vram.types import PHASE_LABELS, PROCESS_RAM_BYTES, Estimate
from studio.vram.vae import decode_peak


def _estimate_reference(
    shapes: ModelShapes, width: int, height: int, frames: int, mode: str, cfg: bool, context: int
) -> Estimate:
    """The official Wan2.2 ``generate.py`` (single GPU, ``--convert_model_dtype``).

    How our ``model-offload`` maps to its ``--offload_model True``: the T5 encoder goes
    to the GPU only to encode the prompts and back to the CPU; the VAE (fp32) stays on
    the GPU for the whole run; only the expert of the current step is on the GPU (the
    other is moved to the CPU at the switch); both experts leave before decoding. With
    ``gpu`` (``offload_model False``, init on GPU) both experts stay. ``--convert_model_dtype``
    casts every DiT parameter to bf16.
    """
    tw = transformer_weights(shapes.transformer)
    te = text_encoder_weights(shapes.text_encoder)
    vae = vae_weights(shapes.vae)
    expert = tw.params * 2
    experts_on_gpu = 1 if mode == "model-offload" else shapes.experts
    t_cfg = shapes.transformer
    tokens = shapes.tokens(width, height, frames)
    block = BlockShape(
        tokens=tokens,
        batch=1,
        dim=shapes.dim,
        ffn=int(t_cfg["ffn_dim"]),
        heads=int(t_cfg["num_attention_heads"]),
        head_dim=int(t_cfg["attention_head_dim"]),
        text_tokens=shapes.text_len,
        out_features=int(t_cfg.get("out_channels", 16)) * math.prod(shapes.patch),
        c=2,
        per_token_mod=True,
        lora={},
    )
    act, where = reference_forward(block)
    cell = shapes.latent_frames(frames) * (height // shapes.vae_spatial) * (width // shapes.vae_spatial)
    latents = (16 + 20 + 36 + 16 * 3) * cell * 4
    vae_w = vae.bytes("fp32")
    dec = decode_peak(shapes, width, height, frames, 4, False)
    phases = {
        "text_encoder": {
            "text_encoder_weights": te.bytes("bf16"),
            "vae_weights": vae_w,
            "text_encoder_activations": text_encoder_activations(shapes.text_encoder, shapes.text_len, 2),
        },
        "denoise": {
            "expert_weights": expert * experts_on_gpu,
            "vae_weights": vae_w,
            "activations": act,
            "latents": latents,
        },
        "decode": {"vae_weights": vae_w, **dec.parts},
    }
    for parts in phases.values():
        parts["cuda_context"] = context
    clean = {p: {k: round(v) for k, v in parts.items()} for p, parts in phases.items()}
    peaks = {p: sum(v.values()) for p, v in clean.items()}
    peak_phase = max(peaks, key=lambda p: peaks[p])
    return Estimate(
        peak_vram_bytes=peaks[peak_phase],
        peak_ram_bytes=PROCESS_RAM_BYTES + te.bytes("bf16") + shapes.experts * expert,
        breakdown=clean[peak_phase],
        phase_peaks=peaks,
        peak_phase=peak_phase,
        phases=clean,
        ram_breakdown={"process": PROCESS_RAM_BYTES, "weights": te.bytes("bf16") + shapes.experts * expert},
        notes=[f"Official Wan2.2 code, peak while {PHASE_LABELS[peak_phase]} ({where})."],
        request=dict(
            model=shapes.name,
            width=width,
            height=height,
            frames=frames,
            mode=mode,
            cfg=cfg,
            runtime="wan-reference",
        ),
        tokens=tokens,
        cuda_context_bytes=context,
    )
