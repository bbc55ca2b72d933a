"""Activations of one transformer forward, replayed tensor by tensor.

A tiny liveness simulator walks diffusers' ``WanTransformerBlock.forward`` (and the official Wan
code's, for the reference runtime): which intermediate tensors are alive at each step and in which
dtype. Their sum at the worst step is the activation peak. Also the text encoder's activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------
# A tiny liveness simulator
# ---------------------------------------------------------------------------


class _Live:
    """Tensors alive at each step of a forward; remembers the worst step."""

    def __init__(self) -> None:
        self.live: dict[str, float] = {}
        self.peak = 0.0
        self.where = ""

    def now(self) -> float:
        return sum(self.live.values())

    def add(self, key: str, nbytes: float, where: str | None = None) -> None:
        self.live[key] = self.live.get(key, 0.0) + nbytes
        self.mark(where or key)

    def drop(self, *keys: str) -> None:
        for key in keys:
            self.live.pop(key, None)

    def mark(self, where: str, extra: float = 0.0) -> None:
        current = self.now() + extra
        if current > self.peak:
            self.peak, self.where = current, where


# ---------------------------------------------------------------------------
# Transformer activations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockShape:
    tokens: int  # B·L (B = 2 when CFG is batched)
    batch: int
    dim: int
    ffn: int
    heads: int
    head_dim: int
    text_tokens: int
    out_features: int  # proj_out: out_channels·prod(patch)
    c: int  # bytes per element of the compute dtype (2 bf16, 4 fp32)
    per_token_mod: bool  # TI2V-5B: a timestep per token
    lora: Mapping[str, int]  # kind -> summed rank of the unfused LoRAs on it (0: none)
    fused_rms_norm: bool = False


def _linear(sim: _Live, key: str, out_bytes: float, tokens: int, rank: int, c: int) -> None:
    """A Linear's output; with unfused LoRA, PEFT computes ``result + lora_B(lora_A(x))*s``:
    two more output-sized tensors alive at once (plus the tiny rank-sized one)."""
    if rank:
        sim.mark(f"{key} (+LoRA)", out_bytes * 3 + tokens * rank * c)
    sim.add(key, out_bytes)


def _rms_norm(sim: _Live, key: str, nbytes_c: float, elems: float, c: int, fused: bool, where: str) -> None:
    """torch.nn.RMSNorm (composite: upcast, pow, x*rsqrt, *weight, cast back) replacing ``key``."""
    if fused:
        sim.add(key + "'", nbytes_c, where)
        sim.drop(key)
        return
    up = elems * 4 if c != 4 else 0.0
    sim.add("rms_up", up, where)
    sim.add("rms_pow", elems * 4, where)
    sim.drop("rms_pow")
    sim.add("rms_x", elems * 4, where)
    sim.add("rms_w", elems * 4, where)
    sim.drop("rms_up", "rms_x")
    if c != 4:
        sim.add(key + "'", nbytes_c, where)
        sim.drop("rms_w")
    else:
        sim.live[key + "'"] = sim.live.pop("rms_w")
    sim.drop(key)


def _rope(sim: _Live, key: str, nbytes_c: float, elems: float, where: str) -> None:
    """diffusers' apply_rotary_emb: an output + three fp32 half-size temporaries at a time."""
    sim.add(key + "r", nbytes_c, where)
    sim.mark(where, 3 * elems / 2 * 4)
    sim.drop(key)


def _norm_mod(sim: _Live, src: str, dst: str, s: BlockShape, *, affine_only: bool = False) -> None:
    """``(norm(x.float()) * (1 + scale) + shift).type_as(x)`` (or ``norm(x.float()).type_as(x)``)."""
    X = s.tokens * s.dim
    c = s.c
    sim.add("f32", X * 4 if c != 4 else 0.0, f"{dst}: {src}.float()")
    sim.add("ln", X * 4, f"{dst}: layer norm")
    sim.drop("f32")
    if not affine_only:
        if s.per_token_mod:
            sim.add("one_plus", X * 4, f"{dst}: 1 + scale")
        sim.add("prod", X * 4, f"{dst}: * (1 + scale)")
        sim.drop("ln", "one_plus")
        sim.add("ln", X * 4, f"{dst}: + shift")
        sim.drop("prod")
    if c != 4:
        sim.add(dst, X * c, f"{dst}: type_as")
        sim.drop("ln")
    else:
        sim.live[dst] = sim.live.pop("ln")


def _gated_add(sim: _Live, hs: str, delta: str, out: str, s: BlockShape, *, delta_float: bool) -> None:
    """``(hs.float() + delta[.float()] * gate).type_as(hs)``."""
    X = s.tokens * s.dim
    c = s.c
    sim.add("a32", X * 4 if c != 4 else 0.0, f"{out}: residual .float()")
    if delta_float and c != 4:
        sim.add("d32", X * 4, f"{out}: ffn .float()")
    sim.add("gated", X * 4, f"{out}: * gate")
    sim.drop("d32")
    sim.add("sum", X * 4, f"{out}: residual add")
    sim.drop("a32", "gated")
    if c != 4:
        sim.add(out, X * c, f"{out}: type_as")
        sim.drop("sum")
    else:
        sim.live[out] = sim.live.pop("sum")


def _diffusers_block(sim: _Live, s: BlockShape) -> None:
    """One ``WanTransformerBlock.forward`` of diffusers 0.42 (inference, no grad).

    ``sim`` already holds the block input ``hs_in`` (the caller's loop variable keeps
    it alive for the whole block) and the per-forward tensors.
    """
    T, X, c = s.tokens, s.tokens * s.dim, s.c
    Xc = X * c
    text = s.batch * s.text_tokens * s.dim
    if s.per_token_mod:  # (scale_shift_table + temb.float()): fp32 (B, L, 6, dim) for the whole block
        sim.add("temb32", 6 * X * 4 if c != 4 else 0.0, "modulation: temb.float()")
        sim.add("mod", 6 * X * 4, "modulation")
        sim.drop("temb32")
    # 1. self-attention
    _norm_mod(sim, "hs_in", "E1", s)
    for name in ("q", "k", "v"):
        _linear(sim, name, Xc, T, s.lora.get("self_attn", 0), c)
    _rms_norm(sim, "q", Xc, X, c, s.fused_rms_norm, "self-attention: norm_q")
    _rms_norm(sim, "k", Xc, X, c, s.fused_rms_norm, "self-attention: norm_k")
    _rope(sim, "q'", Xc, X, "self-attention: RoPE on q")
    _rope(sim, "k'", Xc, X, "self-attention: RoPE on k")
    sim.add("sdpa", Xc, "self-attention: SDPA")
    _linear(sim, "attn_out", Xc, T, s.lora.get("self_attn", 0), c)
    sim.drop("q'r", "k'r", "v", "sdpa")
    _gated_add(sim, "hs_in", "attn_out", "hs1", s, delta_float=False)
    # 2. cross-attention
    _norm_mod(sim, "hs1", "E2", s, affine_only=True)
    sim.drop("E1")
    _linear(sim, "q", Xc, T, s.lora.get("cross_attn", 0), c)
    for name in ("k_text", "v_text"):
        _linear(sim, name, text * c, s.batch * s.text_tokens, s.lora.get("cross_attn", 0), c)
    _rms_norm(sim, "q", Xc, X, c, s.fused_rms_norm, "cross-attention: norm_q")
    _rms_norm(sim, "k_text", text * c, text, c, s.fused_rms_norm, "cross-attention: norm_k")
    sim.add("sdpa", Xc, "cross-attention: SDPA")
    _linear(sim, "attn_out2", Xc, T, s.lora.get("cross_attn", 0), c)
    sim.drop("q'", "k_text'", "v_text", "sdpa", "attn_out")
    sim.add("hs2", Xc, "cross-attention: residual add")
    sim.drop("hs1")
    # 3. feed-forward
    _norm_mod(sim, "hs2", "E3", s)
    sim.drop("E2")
    F = T * s.ffn * c
    _linear(sim, "ffn_h", F, T, s.lora.get("ffn", 0), c)
    sim.add("ffn_gelu", F, "feed-forward: GELU")
    sim.drop("ffn_h")
    _linear(sim, "ffn_out", Xc, T, s.lora.get("ffn", 0), c)
    sim.drop("ffn_gelu")
    _gated_add(sim, "hs2", "ffn_out", "hs_out", s, delta_float=True)
    sim.drop("E3", "attn_out2", "ffn_out", "hs2", "mod")


def diffusers_forward(s: BlockShape) -> tuple[float, str]:
    """Peak bytes of one ``WanTransformer3DModel.forward`` and the step where it happens."""
    T, X, c = s.tokens, s.tokens * s.dim, s.c
    sim = _Live()
    # per-forward tensors: RoPE cos/sin (fp32), projected text, the block input
    sim.add("rope", 2 * (T // s.batch) * s.head_dim * 4, "rotary embedding")
    sim.add("text", s.batch * s.text_tokens * s.dim * c, "text embedding")
    if s.per_token_mod:  # temb (B, L, dim) and timestep_proj (B, L, 6·dim) in the compute dtype
        sim.add("temb_f32", 3 * X * 4, "time embedding (per token)")
        sim.drop("temb_f32")
        sim.add("temb", X * c + 6 * X * c, "time embedding (per token)")
    sim.add("patch", X * c, "patch embedding")
    sim.add("hs_in", X * c, "patch embedding: contiguous")
    sim.drop("patch")
    _diffusers_block(sim, s)
    sim.drop("hs_in")
    sim.live["hs_in"] = sim.live.pop("hs_out")
    # output norm and projection
    sim.add("f32", X * 4 if c != 4 else 0.0, "output norm")
    sim.add("ln", X * 4, "output norm")
    sim.drop("f32")
    sim.add("prod", X * 4, "output norm")
    sim.drop("ln")
    sim.add("out", T * s.out_features * c, "proj_out")
    return sim.peak, sim.where


def reference_forward(s: BlockShape) -> tuple[float, str]:
    """The official Wan2.2 code (``wan/modules/model.py``) for the calibration profile.

    Unlike diffusers it keeps a timestep per token for every Wan2.2 model: ``e``
    (B, L, dim) and ``e0`` (B, L, 6, dim) in fp32 for the whole forward, plus the
    block's own ``modulation + e0`` (another fp32 (B, L, 6, dim)); its residual stream
    is fp32 and its RoPE goes through float64 complex numbers. Counted per token in
    units of ``dim`` bytes (X = tokens·dim), from reading that code.
    """
    X = s.tokens * s.dim
    r = s.ffn / s.dim
    base = (4 + 24 + 24) * X  # e, e0, the block's modulation
    x_in = 4 * X  # fp32 residual held by the caller's loop
    moments = {
        # A (fp32 attn input 4) + q (2) + k (2) + v (2) + RoPE of k: float64 copy, complex product,
        # cat, stack (8 each, three alive) + its fp32 result (4) with q already rotated (fp32 4)
        "self-attention: RoPE (float64)": 4 + 4 + 2 + 2 + 20,
        "cross-attention: norm_q": 2 + 4 + 4 + 4 + 2 + 8,
        "feed-forward: GELU": 2 + 4 + 4 + 4 + 4 * r,
        "feed-forward input": 2 + 4 + 4 + 12,
    }
    where, units = max(moments.items(), key=lambda kv: kv[1])
    extra = s.batch * s.text_tokens * s.dim * 2 + 2 * s.tokens * s.head_dim * 8
    return base + x_in + units * X + extra, where


# ---------------------------------------------------------------------------
# Text encoder activations
# ---------------------------------------------------------------------------


def text_encoder_activations(cfg: Mapping[str, Any], text_len: int, c: int) -> float:
    """One UMT5 encoder layer at ``text_len`` tokens (SDPA with the relative position bias as mask)."""
    d = int(cfg.get("d_model", 4096))
    ff = int(cfg.get("d_ff", 10240))
    heads = int(cfg.get("num_heads", 64))
    inner = heads * int(cfg.get("d_kv", 64))
    s = text_len
    hidden = s * d * c * 3 + s * inner * c * 4  # residual, norm, q/k/v/out
    bias = heads * s * s * c * 2 + s * s * 8 * 3  # position bias + mask, int64 bucket maths
    ffn = s * ff * c * 3  # gated GELU: wi_0, wi_1, product
    return hidden + max(bias, ffn)
