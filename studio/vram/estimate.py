"""VRAM and host-RAM estimate of a render, before it runs (pure: no GPU, no model load): the public API.

See :mod:`studio.vram` for how each part is counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from studio.errors import ValidationError
from studio.models.shapes import (
    ModelShapes,
    shapes_for,
    text_encoder_weights,
    transformer_weights,
    vae_weights,
)
from studio.vram.activations import BlockShape, diffusers_forward, text_encoder_activations
from studio.vram.lora_weights import fuse_backup_bytes, lora_bytes
from studio.vram.reference import _estimate_reference
from studio.vram.types import (
    BLOCK_KINDS,
    CUDA_CONTEXT_BYTES,
    GB,
    MEMORY_MODES,
    PHASE_LABELS,
    PRECISIONS,
    PROCESS_RAM_BYTES,
    Estimate,
    LoraLoad,
    MemoryMode,
    Runtime,
    StoragePrecision,
)
from studio.vram.vae import decode_peak, encode_peak

# ---------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------


def _validate(shapes: ModelShapes, width: int, height: int, frames: int, mode: str, precision: str) -> None:
    if mode not in MEMORY_MODES:
        raise ValidationError(f"Unknown memory mode {mode!r}: use one of {', '.join(MEMORY_MODES)}.")
    if precision == "gguf":
        raise ValidationError(
            "GGUF storage is not supported by the VRAM estimate; choose bf16 or fp8 (layerwise storage)."
        )
    if precision not in PRECISIONS:
        raise ValidationError(f"Unknown precision {precision!r}: use bf16 or fp8.")
    if frames < 1 or (frames - 1) % shapes.vae_temporal:
        raise ValidationError(f"frames must be 4k+1 (1, 5, 9, ... 81 ...); got {frames}.")
    m = shapes.size_multiple
    if width < m or height < m or width % m or height % m:
        raise ValidationError(
            f"width and height must be positive multiples of {m} for this model (got {width}×{height})."
        )


def _storage_key(shapes: ModelShapes, precision: str) -> str:
    if shapes.weights_dtype == "float32":
        return "fp32" if precision == "bf16" else "fp8/fp32"
    return precision


def estimate(
    model: Any,
    *,
    width: int,
    height: int,
    frames: int,
    mode: MemoryMode = "model-offload",
    precision: StoragePrecision = "bf16",
    loras: Iterable[LoraLoad] = (),
    cfg: bool = True,
    vae_tiling: bool = False,
    cfg_batched: bool = False,
    runtime: Runtime = "diffusers",
    fused_rms_norm: bool = False,
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
) -> Estimate:
    """Peak VRAM and host RAM of rendering ``frames`` frames at ``width``×``height``.

    ``model``: a registry name (``wan2.2-i2v-a14b``, ``wan2.2-ti2v-5b``, ``demo``), a
    :class:`~studio.models.registry.ModelSpec` or a :class:`~studio.models.shapes.ModelShapes`.
    ``precision``: the transformers' storage (``fp8`` = layerwise casting, compute in
    bf16); the text encoder and VAE stay in the model dtype. ``cfg``: guidance > 1 (a
    negative pass per step). ``runtime="wan-reference"`` models the official Wan2.2
    ``generate.py`` (``--offload_model True --convert_model_dtype``) instead of
    diffusers; it exists to check the method against the published peak-memory table.
    """
    shapes = shapes_for(model)
    _validate(shapes, width, height, frames, mode, precision)
    loras = list(loras)
    if runtime == "wan-reference":
        if loras or mode not in ("model-offload", "gpu") or precision != "bf16":
            raise ValidationError(
                "The wan-reference runtime models the official Wan2.2 code in bf16 with offload_model "
                "(model-offload) or without it (gpu), and no LoRAs."
            )
        return _estimate_reference(shapes, width, height, frames, mode, cfg, cuda_context_bytes)
    if runtime != "diffusers":
        raise ValidationError(f"Unknown runtime {runtime!r}: use diffusers or wan-reference.")

    storage = _storage_key(shapes, precision)
    base = "fp32" if shapes.weights_dtype == "float32" else "bf16"
    c = 4 if shapes.weights_dtype == "float32" else 2
    notes: list[str] = []
    t_cfg = shapes.transformer
    tw = transformer_weights(t_cfg)
    te = text_encoder_weights(shapes.text_encoder)
    vae = vae_weights(shapes.vae)
    expert_keys = ["high", "low"][: shapes.experts]

    # --- weights of each component as stored
    w_expert = tw.bytes(storage)
    w_te = te.bytes(base)
    w_vae = vae.bytes(base)
    lora_of: dict[str, int] = dict.fromkeys(expert_keys, 0)
    lora_rank: dict[str, dict[str, int]] = {e: {} for e in expert_keys}
    loras_in: dict[str, list[LoraLoad]] = {e: [] for e in expert_keys}
    for lora in loras:
        targets = [e for e in lora.experts if e in lora_of] or (
            expert_keys[:1] if shapes.experts == 1 else []
        )
        for e in targets:
            loras_in[e].append(lora)
            lora_of[e] += lora_bytes(shapes, lora, element_size=c)
            if not lora.fused:
                for kind in lora.module_kinds:
                    if kind in BLOCK_KINDS:
                        lora_rank[e][kind] = lora_rank[e].get(kind, 0) + lora.rank
    if precision == "fp8" and any(lora.fused for lora in loras):
        notes.append("Fusing LoRAs into fp8-stored weights fails in diffusers: use them unfused with fp8.")

    # --- activations of one forward per expert
    tokens = shapes.tokens(width, height, frames)
    batch = 2 if (cfg and cfg_batched) else 1
    patch = shapes.patch
    lin_in, lin_out = tw.largest_linear
    upcast = lin_in * lin_out * c if precision == "fp8" else 0
    act: dict[str, tuple[float, str]] = {}
    for e in expert_keys:
        block = BlockShape(
            tokens=tokens * batch,
            batch=batch,
            dim=shapes.dim,
            ffn=int(t_cfg["ffn_dim"]),
            heads=int(t_cfg["num_attention_heads"]),
            head_dim=int(t_cfg["attention_head_dim"]),
            text_tokens=shapes.text_len,
            out_features=int(t_cfg.get("out_channels", 16)) * math.prod(patch),
            c=c,
            per_token_mod=shapes.expand_timesteps,
            lora=lora_rank[e],
            fused_rms_norm=fused_rms_norm,
        )
        peak, where = diffusers_forward(block)
        act[e] = (peak + upcast, where)

    # --- tensors the pipeline keeps during denoising
    lat_t = shapes.latent_frames(frames)
    lat_hw = (height // shapes.vae_spatial) * (width // shapes.vae_spatial)
    z = shapes.latent_channels
    in_ch = int(t_cfg.get("in_channels", 36))
    out_ch = int(t_cfg.get("out_channels", 16))
    cell = lat_t * lat_hw
    text_embeds = (2 if cfg else 1) * shapes.text_len * int(shapes.text_encoder["d_model"]) * c
    cond_ch = (in_ch - z) if not shapes.expand_timesteps else z
    latents = (
        z * cell * 4  # latents (fp32)
        + cond_ch * cell * 4  # the image condition (fp32)
        + in_ch * cell * c  # the model input of this step
        + out_ch * cell * c * (2 if cfg else 1)  # noise prediction (+ the conditional one kept for CFG)
        + 2 * z * cell * 4  # UniPC's history of model outputs
        + text_embeds
    )

    # --- the VAE
    dec = decode_peak(shapes, width, height, frames, c, vae_tiling)
    enc = encode_peak(shapes, width, height, frames, c, vae_tiling)
    te_act = text_encoder_activations(shapes.text_encoder, shapes.text_len, c)

    # --- what is resident in each phase
    def expert_resident(e: str) -> dict[str, float]:
        lo = f"lora_weights_{e}"
        if mode == "gpu" or mode == "model-offload":
            return {f"expert_{e}_weights": w_expert, lo: lora_of[e]}
        if mode == "group-offload":
            per_block_lora = lora_of[e] / max(1, tw.blocks)
            return {
                f"expert_{e}_weights": tw.outside_blocks(storage) + 2 * tw.block[storage],
                lo: 2 * per_block_lora,
            }
        return {f"expert_{e}_weights": tw.largest_leaf[storage]}

    def weights_in(phase: str) -> dict[str, float]:
        if mode == "gpu":
            out: dict[str, float] = {"text_encoder_weights": w_te}
            for e in expert_keys:
                out[f"expert_{e}_weights"] = w_expert
                out[f"lora_weights_{e}"] = lora_of[e]
            out["vae_weights"] = w_vae
            return out
        if mode == "model-offload":
            if phase == "text_encoder":
                return {"text_encoder_weights": w_te}
            if phase == "image_encode":
                return {"text_encoder_weights": w_te, "vae_weights": w_vae}
            if phase.startswith("denoise"):
                return {**expert_resident(_expert_of(phase)), "vae_weights": w_vae}
            return {"vae_weights": w_vae}
        if mode == "group-offload":
            if phase == "text_encoder":
                return {"text_encoder_weights": w_te}
            if phase.startswith("denoise"):
                return expert_resident(_expert_of(phase))
            return {"vae_weights": w_vae}
        # sequential: the running leaf only
        if phase == "text_encoder":
            return {"text_encoder_weights": te.largest_leaf[base]}
        if phase.startswith("denoise"):
            return expert_resident(_expert_of(phase))
        return {"vae_weights": vae.largest_leaf[base]}

    phases: dict[str, dict[str, float]] = {}
    wheres: dict[str, str] = {}
    phases["text_encoder"] = {**weights_in("text_encoder"), "text_encoder_activations": te_act}
    wheres["text_encoder"] = "UMT5 forward"
    phases["image_encode"] = {**weights_in("image_encode"), "text_embeddings": text_embeds, **enc.parts}
    wheres["image_encode"] = enc.where
    for e in expert_keys:
        phase = f"denoise_{e}" if shapes.experts == 2 else "denoise"
        phases[phase] = {**weights_in(phase), "activations": act[e][0], "latents": latents}
        wheres[phase] = act[e][1]
    phases["decode"] = {**weights_in("decode"), **dec.parts}
    wheres["decode"] = dec.where
    for parts in phases.values():
        parts["cuda_context"] = cuda_context_bytes

    clean = {p: {k: round(v) for k, v in parts.items() if round(v) > 0} for p, parts in phases.items()}
    phase_peaks = {p: sum(parts.values()) for p, parts in clean.items()}
    peak_phase = max(phase_peaks, key=lambda p: phase_peaks[p])

    # --- host RAM
    all_bf16 = te.bytes(base) + shapes.experts * tw.bytes(base) + vae.bytes(base)
    lora_total = sum(lora_of.values())
    video_host = frames * height * width * 3 * 4 * 2 + frames * height * width * 3  # float32 frames ×2, uint8
    ram: dict[str, float] = {"process": PROCESS_RAM_BYTES}
    if mode == "gpu":
        ram["weights_while_loading"] = all_bf16 + lora_total
        notes.append(
            "Host RAM peaks while loading: the pipeline is read into RAM before it moves to the GPU."
        )
    else:
        stored = te.bytes(base) + shapes.experts * tw.bytes(storage) + vae.bytes(base) + lora_total
        ram["offloaded_weights"] = max(stored, all_bf16)
        if precision == "fp8":
            notes.append(
                "The transformers are read in bf16 and cast to fp8 after loading; RAM peaks before that."
            )
        if mode == "group-offload":
            ram["pinned_copy_while_setting_up"] = max(tw.bytes(storage), te.bytes(base))
            notes.append(
                "Group offloading pins a copy of each component while it is set up "
                "(low_cpu_mem_usage=True avoids it, at some speed)."
            )
    # The studio fuses a stack whenever that pays off (every real render) and keeps a host copy of
    # each weight it writes into, so that unfusing restores the model bit for bit.
    if precision != "fp8" and mode != "sequential":
        backups = sum(fuse_backup_bytes(shapes, loras_in[e], element_size=c) for e in expert_keys)
        if backups:
            ram["fuse_backups"] = backups
            notes.append(
                f"Fusing keeps a host copy of the {backups / GB:.1f} GB of weights the LoRAs touch, "
                "so unfusing gives the model back exactly."
            )
    ram["decoded_frames"] = video_host
    ram_clean = {k: round(v) for k, v in ram.items() if round(v) > 0}

    if shapes.weights_dtype == "float32":
        notes.append("The demo model runs in float32: bf16 means its float32 weights here.")
    if mode == "sequential":
        notes.append("Sequential offload moves every layer for every step: very slow, the smallest VRAM.")
    if cfg and not cfg_batched:
        notes.append(
            "CFG: diffusers runs the negative pass after the positive one (activations are not doubled)."
        )
    if mode in ("group-offload", "sequential") and peak_phase == "text_encoder":
        notes.append(
            "The peak is the text encoder: group offloading moves UMT5's whole stack to the GPU at once "
            "(it is not a ModuleList); encoding the prompts with model offload or on the CPU avoids it."
            if mode == "group-offload"
            else "The peak is the text encoder's embedding table, moved to the GPU whole for the lookup."
        )
    if vae_tiling and not dec.where.startswith("tiled"):
        notes.append("VAE tiling has no effect at this size (tiles are 256×256 pixels).")
    notes.append(f"Peak while {PHASE_LABELS[peak_phase]} ({wheres[peak_phase]}).")

    request = dict(
        model=shapes.name,
        width=width,
        height=height,
        frames=frames,
        mode=mode,
        precision=precision,
        cfg=cfg,
        vae_tiling=vae_tiling,
        cfg_batched=cfg_batched,
        runtime=runtime,
        loras=[asdict(lora) for lora in loras],
    )
    return Estimate(
        peak_vram_bytes=phase_peaks[peak_phase],
        peak_ram_bytes=sum(ram_clean.values()),
        breakdown=dict(clean[peak_phase]),
        phase_peaks=phase_peaks,
        peak_phase=peak_phase,
        phases=clean,
        ram_breakdown=ram_clean,
        notes=notes,
        request=request,
        tokens=tokens,
        cuda_context_bytes=cuda_context_bytes,
    )


def _expert_of(phase: str) -> str:
    return "low" if phase == "denoise_low" else "high"
