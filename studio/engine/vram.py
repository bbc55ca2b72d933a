"""VRAM and host-RAM estimate of a render, before it runs (pure: no GPU, no model load).

:func:`estimate` answers "will this fit?" for a model, a storage precision, a memory
mode, a LoRA stack and a render size; :func:`suggest` picks the fastest setup that
fits a card. Both are plain functions of their arguments (plus the architecture
configs of :mod:`studio.engine.model_shapes`), cheap enough to call on every UI change:
the first call for a model imports diffusers/transformers if needed and builds the
components on the ``meta`` device (~0.1 s after the imports); later calls are
arithmetic (~0.2 ms).

How each part is counted
------------------------

*Weights* come from the real parameter shapes (see :mod:`model_shapes`), with the
dtype each parameter really has once loaded (fp32-kept modules, fp8 layerwise
storage). *LoRA weights* are ``rank·(in+out)`` per targeted Linear of each targeted
block, in the model dtype (diffusers/PEFT cast them to it), per expert they are loaded
into; fused LoRAs stay loaded (``unfuse_lora`` needs them).

*Activations of one transformer forward* replay ``WanTransformerBlock.forward`` of
diffusers tensor by tensor (:func:`_diffusers_block`): which intermediate tensors are
alive at each step, in which dtype (the bf16 residual stream, the fp32 copies made by
``.float()`` around the norms and the gated residual adds, q/k/v, the composite
RMSNorm's fp32 temporaries, the fp32 RoPE halves, the SDPA output — no L×L matrix:
flash / memory-efficient attention — the FFN hidden of ``ffn_dim`` before and after
GELU, the extra output-sized tensors of unfused LoRA layers). Their sum at the worst
step is the peak; it is exact per token up to kernel workspaces (the tests check it
against the live tensors of a real forward on CPU). Classifier-free guidance runs the
conditional and unconditional passes one after the other in diffusers, so it adds the
kept first prediction and the negative prompt embeddings, not a second set of
activations (``cfg_batched=True`` models a runtime that batches them: twice the
tokens).

*VAE decode/encode* walk the Wan VAE's causal decoder/encoder from its config: it
works one latent frame (decode) or four video frames (encode) at a time, keeps a
two-frame cache per causal convolution (counted in full), and its biggest moment is a
residual block or the fp32 nearest-upsample at full resolution; the decoded video is
accumulated on the GPU. Tiling (``AutoencoderKLWan.enable_tiling``) bounds the working
set to 256×256-pixel tiles but keeps all decoded tiles until they are blended.

*Memory modes* decide what is resident in each phase (text encoding, image encoding,
denoising with each expert, decoding):

``gpu``            everything on the GPU all the time.
``model-offload``  diffusers ``enable_model_cpu_offload``: one component at a time in the
                   order text_encoder → transformer → transformer_2 → vae; a component
                   leaves the GPU when the *next one in that order* starts, so the VAE
                   (loaded for the I2V image encoding) stays during denoising, and the
                   text encoder is still there while the image is encoded.
``group-offload``  ``enable_group_offload(block_level, num_blocks_per_group=1,
                   use_stream=True)``: per transformer, everything outside the blocks
                   plus two blocks (the running one and the prefetched next one); the
                   UMT5 stack is not a ModuleList, so the text encoder goes up whole.
``sequential``     ``enable_sequential_cpu_offload``: only the running leaf module's
                   weights (the biggest: UMT5's 2.1 GB embedding while encoding text).

A CUDA context (~0.8 GB: driver, cuBLAS/cuDNN handles; not reported by
``torch.cuda.max_memory_allocated``) is added to every phase; see
:attr:`Estimate.torch_peak_bytes` for the number to compare with the allocator.

Host RAM: the pipeline is loaded on the CPU first (all weights in bf16), offloaded
components live there, group offloading makes pinned copies, and the decoded frames
come back as float32 arrays; plus the Python process itself.

Calibration: the weights equal those of real modules; the transformer and VAE
activations match the live tensors of real diffusers forwards on CPU within a few
percent (tests/engine/test_vram.py). The published Wan2.2 peaks (41.0 / 59.7 GB, A14B
480p / 720p on one H100) were measured with the official code, whose forward keeps
per-token fp32 modulation tensors that diffusers does not: ``runtime="wan-reference"``
counts those and lands within 10% of the table; diffusers itself needs ~11 GB less at
480p and ~26 GB less at 720p. RMSNorm is counted as the composite op (fp32
temporaries); ``fused_rms_norm=True`` counts a fused kernel instead.

GGUF storage is not supported by the estimator (nor fp8 text encoders).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from studio.engine.model_shapes import (
    ModelShapes,
    shapes_for,
    text_encoder_weights,
    transformer_weights,
    vae_weights,
)
from studio.errors import ValidationError

GB = 1_000_000_000
GiB = 1 << 30

MemoryMode = Literal["gpu", "model-offload", "group-offload", "sequential"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("gpu", "model-offload", "group-offload", "sequential")
StoragePrecision = Literal["bf16", "fp8"]
PRECISIONS: tuple[StoragePrecision, ...] = ("bf16", "fp8")
Verdict = Literal["fits", "tight", "won't fit"]
Runtime = Literal["diffusers", "wan-reference"]

CUDA_CONTEXT_BYTES = 800 * 1000**2
PROCESS_RAM_BYTES = 2 * GB  # python + torch + diffusers + transformers + gradio, resident
TIGHT_MARGIN = 0.10  # "tight" when the peak is within 10% of the card
TILE_SAMPLE = 256  # AutoencoderKLWan tiling defaults (pixels)
TILE_STRIDE = 192

# LoRA module kinds (studio.loras.keys.ModuleKind) -> the Linears of one block they target.
_BLOCK_KINDS = ("self_attn", "cross_attn", "ffn", "image_cross_attn")
DEFAULT_LORA_KINDS = ("self_attn", "cross_attn", "ffn")

PHASES = ("text_encoder", "image_encode", "denoise", "denoise_high", "denoise_low", "decode")
PHASE_LABELS = {
    "text_encoder": "encoding the prompt",
    "image_encode": "encoding the start image",
    "denoise": "denoising",
    "denoise_high": "denoising (high-noise expert)",
    "denoise_low": "denoising (low-noise expert)",
    "decode": "decoding the video",
}


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraLoad:
    """One LoRA file as loaded into the model: its shape, where, and whether fused.

    ``experts`` are the experts it is loaded into (a file used on both experts of
    A14B is loaded twice: once per transformer). ``blocks`` is the number of
    transformer blocks it targets (``None``: all of them). ``module_kinds`` uses the
    names of :class:`studio.loras.inspect.LoraInfo` (``self_attn``, ``cross_attn``,
    ``ffn``, ``embeddings``, ``head``...).
    """

    rank: int
    module_kinds: tuple[str, ...] = DEFAULT_LORA_KINDS
    experts: tuple[str, ...] = ("high", "low")
    blocks: int | None = None
    fused: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValidationError(f"A LoRA rank must be at least 1 (got {self.rank}).")
        bad = set(self.experts) - {"high", "low"}
        if bad:
            raise ValidationError(f"Unknown expert(s) {sorted(bad)}: use 'high' and/or 'low'.")

    @classmethod
    def from_info(
        cls, info: Any, *, experts: Sequence[str] = ("high", "low"), fused: bool = False
    ) -> LoraLoad:
        """From a :class:`studio.loras.inspect.LoraInfo` (the rank used is the largest)."""
        ranks = list(getattr(info, "ranks", None) or [])
        rank = max(ranks) if ranks else (getattr(info, "rank", None) or 0)
        if not rank:
            raise ValidationError(
                f"{getattr(info, 'file_name', 'This file')} has no LoRA rank the estimator can read "
                f"({getattr(info, 'layout_label', 'unknown layout')}); it cannot be counted."
            )
        kinds = tuple(getattr(info, "module_kinds", None) or DEFAULT_LORA_KINDS)
        blocks = getattr(info, "num_blocks", None) or None
        return cls(
            rank=int(rank),
            module_kinds=kinds,
            experts=tuple(experts),
            blocks=blocks,
            fused=fused,
            name=str(getattr(info, "file_name", "")),
        )


# ---------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Peak VRAM and host RAM of one render, with what they are made of.

    ``breakdown`` lists what is on the GPU at the peak (it sums to
    ``peak_vram_bytes``); ``phases`` has the same for every phase and
    ``phase_peaks`` each phase's total; ``ram_breakdown`` sums to ``peak_ram_bytes``.
    """

    peak_vram_bytes: int
    peak_ram_bytes: int
    breakdown: dict[str, int]
    phase_peaks: dict[str, int]
    peak_phase: str
    phases: dict[str, dict[str, int]]
    ram_breakdown: dict[str, int]
    notes: list[str]
    request: dict[str, Any]
    tokens: int
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES

    def fits(self, gpu_bytes: int | float) -> Verdict:
        """'fits' with 10% to spare, 'tight' within the last 10%, else "won't fit"."""
        if gpu_bytes <= 0:
            return "won't fit"
        if self.peak_vram_bytes <= (1 - TIGHT_MARGIN) * gpu_bytes:
            return "fits"
        if self.peak_vram_bytes <= gpu_bytes:
            return "tight"
        return "won't fit"

    @property
    def torch_peak_bytes(self) -> int:
        """The peak without the CUDA context: compare with ``torch.cuda.max_memory_allocated()``."""
        return self.peak_vram_bytes - self.cuda_context_bytes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["torch_peak_bytes"] = self.torch_peak_bytes
        return data


@dataclass(frozen=True)
class Suggestion:
    """The fastest setup that fits a card, with a sentence that says why."""

    mode: MemoryMode
    precision: StoragePrecision
    width: int
    height: int
    frames: int
    vae_tiling: bool
    estimate: Estimate
    verdict: Verdict
    reason: str
    reduced: bool  # frames or resolution had to be lowered

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
        return data


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
class _BlockShape:
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


def _norm_mod(sim: _Live, src: str, dst: str, s: _BlockShape, *, affine_only: bool = False) -> None:
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


def _gated_add(sim: _Live, hs: str, delta: str, out: str, s: _BlockShape, *, delta_float: bool) -> None:
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


def _diffusers_block(sim: _Live, s: _BlockShape) -> None:
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


def _diffusers_forward(s: _BlockShape) -> tuple[float, str]:
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


def _reference_forward(s: _BlockShape) -> tuple[float, str]:
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
# VAE encode / decode
# ---------------------------------------------------------------------------


@dataclass
class _VaeRun:
    peak: float = 0.0  # working set of the worst op (caller adds caches, inputs, outputs)
    where: str = ""
    cache: float = 0.0  # two-frame (or one-frame) caches of the causal convolutions

    def op(self, where: str, nbytes: float) -> None:
        if nbytes > self.peak:
            self.peak, self.where = nbytes, where


def _resnet(run: _VaeRun, where: str, cin: int, cout: int, t: int, n: int, c: int, held: float) -> None:
    """WanResidualBlock at t frames of n pixels (``held``: tensors the caller keeps alive)."""
    x_in = cin * t * n * c
    h = cout * t * n * c if cin != cout else 0.0
    base = held + x_in + h
    for cch, tag in ((cin, "norm1/conv1"), (cout, "norm2/conv2")):
        prev = cch * t * n * c if tag == "norm2/conv2" else 0.0  # conv1 output feeding norm2
        up = cch * t * n * 4 if c != 4 else 0.0
        run.op(f"{where} {tag}: RMS norm", base + prev + up + cch * t * n * 4)
        act = cch * t * n * c
        clone = cch * 2 * n * c
        cat = cch * (t + 2) * n * c
        out = cout * t * n * c
        run.op(f"{where} {tag}: causal conv", base + act + clone + max(2 * cat, cat + out))
        run.cache += clone
    run.op(f"{where}: residual add", base + 2 * cout * t * n * c)


def _upsample(
    run: _VaeRun, where: str, ch: int, cout: int, t: int, n: int, c: int, held: float, temporal: bool
) -> int:
    """WanResample upsample2d/3d: optional causal time conv doubling t, then nearest ×2 in fp32 + conv."""
    x_in = ch * t * n * c
    base = held + x_in
    if temporal:
        clone = ch * 2 * n * c
        cat = ch * (t + 2) * n * c
        run.op(f"{where}: time conv", base + clone + 2 * cat + 2 * ch * t * n * c)
        run.op(f"{where}: frame interleave", base + 2 * (2 * ch * t * n * c))
        run.cache += clone
        t *= 2
    # (b·t, c, h, w) is a view for one video; x.float(), nearest ×2 in fp32, cast back, conv
    f32 = ch * t * n * 4 if c != 4 else 0.0
    big32 = ch * t * 4 * n * 4
    run.op(f"{where}: nearest upsample (fp32)", base + f32 + big32)
    run.op(f"{where}: upsample cast", base + big32 + (ch * t * 4 * n * c if c != 4 else 0))
    run.op(f"{where}: upsample conv", base + ch * t * 4 * n * c + cout * t * 4 * n * c)
    return t


def _decoder_chunk(cfg: Mapping[str, Any], h: int, w: int, c: int) -> tuple[_VaeRun, int, int]:
    """The steady-state decode of one latent frame (→ 4 frames); returns run, frames, output pixels."""
    run = _VaeRun()
    base_dim = int(cfg.get("decoder_base_dim") or cfg.get("base_dim", 96))
    mult = list(cfg.get("dim_mult", [1, 2, 4, 4]))
    nres = int(cfg.get("num_res_blocks", 2))
    z = int(cfg.get("z_dim", 16))
    residual = bool(cfg.get("is_residual", False))
    out_ch = int(cfg.get("out_channels", 3))
    t_up = list(cfg.get("temperal_downsample", [False, True, True]))[::-1]
    dims = [base_dim * u for u in [mult[-1], *mult[::-1]]]
    t, n = 1, h * w
    run.cache += z * 2 * n * c  # conv_in
    run.op("decoder conv_in", z * (t + 2) * n * c * 2 + dims[0] * t * n * c)
    # the decoder's frame keeps each block's input alive while the block runs
    _resnet(run, "mid block", dims[0], dims[0], t, n, c, 0.0)
    run.op("mid block attention", dims[0] * t * n * c * 8 + dims[0] * t * n * 4)
    _resnet(run, "mid block", dims[0], dims[0], t, n, c, dims[0] * t * n * c)
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
        if i > 0 and not residual:
            cin //= 2
        up = i != len(mult) - 1
        temporal = bool(up and t_up[i])
        block_in = cin * t * n * c
        copy = block_in if residual else 0.0  # x_copy for the DupUp shortcut
        ch = cin
        for j in range(nres + 1):
            _resnet(run, f"up block {i} resnet {j}", ch, cout, t, n, c, copy + (block_in if j else 0.0))
            ch = cout
        if up:
            up_out = cout if residual else cout // 2
            t_new = _upsample(run, f"up block {i} upsample", cout, up_out, t, n, c, copy + block_in, temporal)
            if residual:  # DupUp3D: repeat_interleave + permuted copy, then the add
                big = up_out * t_new * 4 * n * c
                run.op(f"up block {i} shortcut", block_in + copy + 4 * big)
            t, n = t_new, n * 4
    last = dims[-1]
    run.op("decoder head", (last * t * n * c) * 3 + (last * t * n * 4 if c != 4 else 0) + last * t * n * 4)
    run.cache += last * 2 * n * c  # conv_out
    run.op("decoder conv_out", last * t * n * c * 2 + last * (t + 2) * n * c * 2 + out_ch * t * n * c)
    return run, t, n


def _encoder_chunk(
    cfg: Mapping[str, Any], height: int, width: int, c: int, frames: int
) -> tuple[_VaeRun, int]:
    """The steady-state encode of four video frames (one for a single image); returns run and
    latent channels·pixels out."""
    run = _VaeRun()
    base_dim = int(cfg.get("base_dim", 96))
    mult = list(cfg.get("dim_mult", [1, 2, 4, 4]))
    nres = int(cfg.get("num_res_blocks", 2))
    z = int(cfg.get("z_dim", 16))
    residual = bool(cfg.get("is_residual", False))
    in_ch = int(cfg.get("in_channels", 3))
    patch = int(cfg.get("patch_size") or 1)
    t_down = list(cfg.get("temperal_downsample", [False, True, True]))
    dims = [base_dim * u for u in [1, *mult]]
    t, n = (4 if frames > 1 else 1), (height // patch) * (width // patch)
    run.cache += in_ch * 2 * n * c
    run.op("encoder conv_in", in_ch * t * n * c + in_ch * (t + 2) * n * c * 2 + dims[0] * t * n * c)
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
        last = i == len(mult) - 1
        held = cin * t * n * c if residual else 0.0  # x_copy for the AvgDown shortcut
        ch = cin
        for j in range(nres):
            _resnet(run, f"down block {i} resnet {j}", ch, cout, t, n, c, held)
            ch = cout
        if not last:
            x_in = cout * t * n * c
            pad = cout * t * (n + 2 * int(math.sqrt(n)) + 1) * c  # ZeroPad2d((0, 1, 0, 1))
            run.op(f"down block {i} downsample", held + x_in + pad + cout * t * (n // 4) * c)
            n //= 4
            if t_down[i]:
                run.cache += cout * 1 * n * c
                run.op(
                    f"down block {i} time conv",
                    held + cout * t * n * c * 2 + cout * (t + 1) * n * c + cout * (t // 2) * n * c,
                )
                t = max(1, t // 2)
            if residual:
                run.op(f"down block {i} shortcut", held * 3 + cout * t * n * c)
    _resnet(run, "encoder mid block", dims[-1], dims[-1], t, n, c, 0.0)
    run.op("encoder mid attention", dims[-1] * t * n * c * 7 + dims[-1] * t * n * 4)
    run.cache += dims[-1] * 2 * n * c
    return run, 2 * z * n


@dataclass(frozen=True)
class _VaePeak:
    total: float
    where: str
    parts: dict[str, float]


def _tiles(latent_h: int, latent_w: int, spatial: int) -> tuple[int, int, int]:
    """(tiles, tile latent h, tile latent w) of AutoencoderKLWan.tiled_decode."""
    tile = TILE_SAMPLE // spatial
    stride = TILE_STRIDE // spatial
    rows = math.ceil(latent_h / stride)
    cols = math.ceil(latent_w / stride)
    return rows * cols, min(tile, latent_h), min(tile, latent_w)


def _decode_peak(shapes: ModelShapes, width: int, height: int, frames: int, c: int, tiling: bool) -> _VaePeak:
    cfg = shapes.vae
    patch = int(cfg.get("patch_size") or 1)
    spatial = shapes.vae_spatial
    lat_t = shapes.latent_frames(frames)
    lat_h, lat_w = height // spatial, width // spatial
    z = shapes.latent_channels
    video = 3 * frames * height * width * c
    latents = z * lat_t * lat_h * lat_w * c * 3  # latents, de-normalised copy, post_quant_conv output
    tile_min = TILE_SAMPLE // spatial
    if tiling and (lat_w > tile_min or lat_h > tile_min):
        count, th, tw = _tiles(lat_h, lat_w, spatial)
        run, _, _ = _decoder_chunk(cfg, th, tw, c)
        tile_video = 3 * frames * (th * spatial) * (tw * spatial) * c
        decoded_tiles = count * tile_video
        working = run.cache + run.peak + decoded_tiles
        blending = decoded_tiles + 2 * video
        parts = {"vae_decode_working": max(working, blending), "latents_for_decode": latents}
        where = f"tiled decode: {run.where}" if working >= blending else "tiled decode: blending the tiles"
        return _VaePeak(sum(parts.values()), where, parts)
    run, t, n = _decoder_chunk(cfg, lat_h, lat_w, c)
    # the video decoded so far stays on the GPU, and so does the previous chunk's output
    chunk = run.cache + run.peak + video + int(cfg.get("out_channels", 3)) * t * n * c
    final = run.cache + 2 * video + (video if patch > 1 else 0)  # last cat (+ unpatchify), then clamp
    parts = {"vae_decode_working": max(chunk, final), "latents_for_decode": latents}
    where = run.where if chunk >= final else "assembling the decoded frames"
    return _VaePeak(sum(parts.values()), where, parts)


def _encode_peak(shapes: ModelShapes, width: int, height: int, frames: int, c: int, tiling: bool) -> _VaePeak:
    """The I2V start-image encode: A14B encodes a whole F-frame video (image + zeros)."""
    cfg = shapes.vae
    enc_frames = 1 if shapes.expand_timesteps else frames
    video = 3 * enc_frames * height * width * c + 3 * height * width * 4  # condition video + image
    patch = int(cfg.get("patch_size") or 1)
    if patch > 1:
        video += 3 * enc_frames * height * width * c  # patchified copy
    tile_min = TILE_SAMPLE
    if tiling and (width > tile_min or height > tile_min):
        h, w = min(height, TILE_SAMPLE), min(width, TILE_SAMPLE)
        run, _ = _encoder_chunk(cfg, h, w, c, enc_frames)
        where = f"tiled encode: {run.where}"
        working = run.cache + run.peak  # the encoded tiles (latents) are small
    else:
        run, _ = _encoder_chunk(cfg, height, width, c, enc_frames)
        where = run.where
        working = run.cache + run.peak
    parts = {"vae_encode_working": working, "condition_video": video}
    return _VaePeak(sum(parts.values()), where, parts)


# ---------------------------------------------------------------------------
# Text encoder activations
# ---------------------------------------------------------------------------


def _text_encoder_activations(cfg: Mapping[str, Any], text_len: int, c: int) -> float:
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


# ---------------------------------------------------------------------------
# LoRA weights
# ---------------------------------------------------------------------------


def _lora_block_params(kind: str, dim: int, ffn: int, text_dim: int) -> int:
    """rank-1 parameter count (in + out summed) of the Linears ``kind`` targets in one block."""
    if kind == "self_attn":
        return 4 * (dim + dim)
    if kind == "cross_attn":
        return 4 * (dim + dim)
    if kind == "ffn":
        return (dim + ffn) + (ffn + dim)
    return 0  # image_cross_attn: Wan2.2 has no add_k/v_proj; diffusers drops those keys


def _lora_top_params(kind: str, shapes: ModelShapes) -> int:
    from studio.loras.synthetic import top_level_shapes

    top = top_level_shapes(shapes.transformer)
    if kind == "embeddings":
        return sum(i + o for name, (i, o) in top.items() if name.startswith("condition_embedder"))
    if kind == "head":
        i, o = top["proj_out"]
        return i + o
    return 0


def lora_bytes(shapes: ModelShapes, lora: LoraLoad, *, element_size: int = 2) -> int:
    """Bytes of one LoRA in one expert (model dtype: PEFT layers take the base layer's dtype)."""
    t = shapes.transformer
    dim = shapes.dim
    ffn = int(t["ffn_dim"])
    layers = int(t["num_layers"])
    blocks = min(lora.blocks or layers, layers)
    per_block = sum(
        _lora_block_params(k, dim, ffn, int(t.get("text_dim", 4096))) for k in set(lora.module_kinds)
    )
    top = sum(_lora_top_params(k, shapes) for k in set(lora.module_kinds))
    return lora.rank * (per_block * blocks + top) * element_size


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
    :class:`~studio.models.ModelSpec` or a :class:`~studio.engine.model_shapes.ModelShapes`.
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
    for lora in loras:
        targets = [e for e in lora.experts if e in lora_of] or (
            expert_keys[:1] if shapes.experts == 1 else []
        )
        for e in targets:
            lora_of[e] += lora_bytes(shapes, lora, element_size=c)
            if not lora.fused:
                for kind in lora.module_kinds:
                    if kind in _BLOCK_KINDS:
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
        block = _BlockShape(
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
        peak, where = _diffusers_forward(block)
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
    dec = _decode_peak(shapes, width, height, frames, c, vae_tiling)
    enc = _encode_peak(shapes, width, height, frames, c, vae_tiling)
    te_act = _text_encoder_activations(shapes.text_encoder, shapes.text_len, c)

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
    block = _BlockShape(
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
    act, where = _reference_forward(block)
    cell = shapes.latent_frames(frames) * (height // shapes.vae_spatial) * (width // shapes.vae_spatial)
    latents = (16 + 20 + 36 + 16 * 3) * cell * 4
    vae_w = vae.bytes("fp32")
    dec = _decode_peak(shapes, width, height, frames, 4, False)
    phases = {
        "text_encoder": {
            "text_encoder_weights": te.bytes("bf16"),
            "vae_weights": vae_w,
            "text_encoder_activations": _text_encoder_activations(shapes.text_encoder, shapes.text_len, 2),
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


# ---------------------------------------------------------------------------
# Suggest
# ---------------------------------------------------------------------------

CANDIDATES: tuple[tuple[MemoryMode, StoragePrecision], ...] = (
    ("gpu", "bf16"),
    ("gpu", "fp8"),
    ("model-offload", "bf16"),
    ("model-offload", "fp8"),
    ("group-offload", "bf16"),
    ("group-offload", "fp8"),
    ("sequential", "bf16"),
    ("sequential", "fp8"),
)
MIN_FRAMES = 17

MODE_LABELS = {
    "gpu": "everything on the GPU",
    "model-offload": "model offload",
    "group-offload": "group offload",
    "sequential": "sequential offload",
}


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _first_fit(shapes, card_bytes, width, height, frames, loras, cfg, vae_tiling, allow_tiling):
    tried = []
    for mode, precision in CANDIDATES:
        if any(lora.fused for lora in loras) and precision == "fp8":
            continue
        options = [vae_tiling] + ([True] if allow_tiling and not vae_tiling else [])
        for tiling in options:
            est = estimate(
                shapes, width=width, height=height, frames=frames, mode=mode, precision=precision,
                loras=loras, cfg=cfg, vae_tiling=tiling,
            )  # fmt: skip
            tried.append((mode, precision, tiling, est))
            if est.fits(card_bytes) == "fits":
                return (mode, precision, tiling, est), tried
    return None, tried


def _smaller_sizes(width: int, height: int, frames: int, multiple: int):
    """Fewer frames first (4k+1, down to 17), then ~10% smaller sides keeping the aspect."""
    f = frames
    while f > MIN_FRAMES:
        f = max(MIN_FRAMES, ((f - 1) * 3 // 4) // 4 * 4 + 1)
        yield width, height, f
    f = min(frames, MIN_FRAMES)
    scale = 1.0
    while True:
        scale *= 0.9
        w = max(multiple, int(width * scale) // multiple * multiple)
        h = max(multiple, int(height * scale) // multiple * multiple)
        yield w, h, f
        if w == multiple and h == multiple:
            return


def suggest(
    model: Any,
    card_bytes: int | float,
    *,
    width: int,
    height: int,
    frames: int,
    loras: Iterable[LoraLoad] = (),
    cfg: bool = True,
    vae_tiling: bool = False,
    allow_tiling: bool = True,
) -> Suggestion:
    """The fastest (mode, precision) whose estimate fits ``card_bytes`` with 10% to spare.

    Order: gpu bf16 > gpu fp8 > model-offload bf16 > model-offload fp8 > group-offload
    bf16 > group-offload fp8 > sequential bf16 > sequential fp8 (VAE tiling is switched
    on when that alone makes a setup fit). When nothing fits, frames are reduced (4k+1,
    down to 17), then both sides by ~10% steps (multiples of the model's size step,
    aspect kept), and the fastest setup that fits the smaller render is returned.
    """
    shapes = shapes_for(model)
    loras = list(loras)
    _validate(shapes, width, height, frames, "gpu", "bf16")
    found, tried = _first_fit(shapes, card_bytes, width, height, frames, loras, cfg, vae_tiling, allow_tiling)
    if found:
        mode, precision, tiling, est = found
        faster = tried[0][3] if tried[0][3] is not est else None
        reason = (
            f"{MODE_LABELS[mode][0].upper()}{MODE_LABELS[mode][1:]} in {precision}{' with VAE tiling' if tiling else ''} fits "
            f"{width}×{height}×{frames} on this {_gb(card_bytes)} card (peak {_gb(est.peak_vram_bytes)} "
            f"while {PHASE_LABELS[est.peak_phase]})"
        )
        if faster is not None:
            reason += f"; keeping everything on the GPU in bf16 would need {_gb(faster.peak_vram_bytes)}"
        reason += "."
        return Suggestion(
            mode, precision, width, height, frames, tiling, est, est.fits(card_bytes), reason, False
        )

    smallest = min((t[3] for t in tried), key=lambda e: e.peak_vram_bytes)
    cheapest = smallest
    fused = any(lora.fused for lora in loras)
    for w, h, f in _smaller_sizes(width, height, frames, shapes.size_multiple):
        cheapest = estimate(
            shapes, width=w, height=h, frames=f, mode="sequential", precision="bf16" if fused else "fp8",
            loras=loras, cfg=cfg, vae_tiling=True,
        )  # fmt: skip
        if cheapest.fits(card_bytes) != "fits":
            continue
        found, _ = _first_fit(shapes, card_bytes, w, h, f, loras, cfg, vae_tiling, allow_tiling)
        assert found is not None
        mode, precision, tiling, est = found
        reason = (
            f"Nothing fits {width}×{height}×{frames} on this {_gb(card_bytes)} card (the smallest setup "
            f"needs {_gb(smallest.peak_vram_bytes)}); {w}×{h}×{f} with {MODE_LABELS[mode]} in {precision}"
            f"{' and VAE tiling' if tiling else ''} peaks at {_gb(est.peak_vram_bytes)}."
        )
        return Suggestion(mode, precision, w, h, f, tiling, est, est.fits(card_bytes), reason, True)
    r = cheapest.request
    reason = (
        f"Nothing fits on this {_gb(card_bytes)} card, even {r['width']}×{r['height']}×{r['frames']} with "
        f"{MODE_LABELS[r['mode']]} in {r['precision']} and VAE tiling: that still needs "
        f"{_gb(cheapest.peak_vram_bytes)} (while {PHASE_LABELS[cheapest.peak_phase]})."
    )
    return Suggestion(r["mode"], r["precision"], r["width"], r["height"], r["frames"], r["vae_tiling"],
                      cheapest, cheapest.fits(card_bytes), reason, True)  # fmt: skip


__all__ = [
    "CUDA_CONTEXT_BYTES",
    "GB",
    "MEMORY_MODES",
    "PRECISIONS",
    "Estimate",
    "LoraLoad",
    "Suggestion",
    "estimate",
    "lora_bytes",
    "suggest",
]
