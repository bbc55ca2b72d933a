"""What the VRAM estimator takes and gives: the LoRA loads it counts, the estimate with its per-phase
breakdown, a suggestion, and the constants (memory modes, phases, CUDA context) they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

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
BLOCK_KINDS = ("self_attn", "cross_attn", "ffn", "image_cross_attn")
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
