"""Memory modes: where the model's weights live during a render, and in which precision.

- ``auto``: the demo model all on the GPU, real models with model CPU offload (CPU-only
  machines run everything on the CPU);
- ``gpu``: everything resident on the GPU (fastest; A14B needs an 80 GB card);
- ``model-offload``: one component (text encoder, an expert, the VAE) on the GPU at a time;
- ``group-offload``: block-level group offload with CUDA streams, for 16–24 GB cards;
- ``sequential``: leaf-level offload, the last resort (slow);
- precision ``fp8``: layerwise casting, weights stored in float8 and computed in the dtype the
  model was loaded in (bf16 on a GPU), on top of any mode. LoRA layers stay in the compute
  precision, and fusing is not available (nor with ``sequential``: see :func:`fuse_refusal`).
- ``vae_tiling``: the VAE decodes in tiles (lower decode peak).
- ``compile``: compiled mode (:mod:`studio.engine.compile`): the experts' blocks run through
  ``torch.compile`` with ``compile_lora_rank`` LoRA rows per expert that hot-swap without
  recompiling. Turning it on or off reloads no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from studio.errors import ValidationError

Mode = Literal["auto", "gpu", "model-offload", "group-offload", "sequential"]
Precision = Literal["bf16", "fp8"]
MODES: tuple[str, ...] = ("auto", "gpu", "model-offload", "group-offload", "sequential")
PRECISIONS: tuple[str, ...] = ("bf16", "fp8")
CUDA_MODES = {"gpu", "model-offload", "group-offload", "sequential"}
TRANSFORMERS = ("transformer", "transformer_2")
MAX_COMPILE_LORA_RANK = 4096


@dataclass(frozen=True)
class MemoryConfig:
    mode: Mode = "auto"
    precision: Precision = "bf16"
    vae_tiling: bool = False
    compile: bool = False
    compile_lora_rank: int = 128  # LoRA rows per expert in compiled mode (studio.engine.compile)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValidationError(f"Unknown memory mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.precision not in PRECISIONS:
            raise ValidationError(f"Unknown precision {self.precision!r}; choose bf16 or fp8.")
        if not 1 <= int(self.compile_lora_rank) <= MAX_COMPILE_LORA_RANK:
            raise ValidationError(
                f"The LoRA room of compiled mode must be 1 to {MAX_COMPILE_LORA_RANK} rows "
                f"(got {self.compile_lora_rank}); 128 holds e.g. a rank-64 LoRA and two rank-32 ones."
            )

    def needs_reload_from(self, other: MemoryConfig) -> bool:
        """Placement and precision are set when the model loads; VAE tiling and compiled mode can change any time."""
        return (self.mode, self.precision) != (other.mode, other.precision)


def fuse_refusal(config: MemoryConfig) -> str | None:
    """Why LoRAs cannot be fused in this setup (fp8 storage, weights held by offload hooks), or None."""
    if config.precision == "fp8":
        return (
            "LoRAs cannot be fused into fp8 weights; untick Fuse (the LoRAs then run unfused) "
            "or choose bf16 precision."
        )
    if config.mode == "sequential":
        return "LoRAs cannot be fused with sequential offload; untick Fuse or choose another memory mode."
    return None


def effective_mode(config: MemoryConfig, *, is_demo: bool) -> str:
    """What ``auto`` means for a model: the demo all on the GPU, real models with model offload."""
    if config.mode != "auto":
        return config.mode
    return "gpu" if is_demo else "model-offload"


def check_device(config: MemoryConfig, device: str) -> None:
    if device != "cuda" and config.mode in CUDA_MODES:
        raise ValidationError(
            f"The memory mode {config.mode!r} needs an NVIDIA GPU (CUDA) and this machine has none; "
            "choose 'auto', which runs everything on the CPU here."
        )


def apply_memory(pipe, config: MemoryConfig, *, device: str, is_demo: bool) -> None:
    """Apply precision, placement and VAE tiling to a freshly loaded pipeline."""
    import torch

    check_device(config, device)
    if config.precision == "fp8":
        for name in TRANSFORMERS:
            model = getattr(pipe, name, None)
            if model is not None:
                model._studio_compute_dtype = compute = model.dtype  # the dtype it was loaded in
                model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    set_vae_tiling(pipe, config.vae_tiling)
    if device != "cuda":
        return
    mode = effective_mode(config, is_demo=is_demo)
    if mode == "gpu":
        pipe.to("cuda")
    elif mode == "model-offload":
        pipe.enable_model_cpu_offload()
    elif mode == "group-offload":
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload()


def set_vae_tiling(pipe, on: bool) -> None:
    if on:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


def lora_compute_dtype(model):
    """The dtype LoRA layers must have in ``model``: its compute dtype under layerwise casting, else None."""
    import torch

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            fallback = torch.bfloat16 if weight.device.type == "cuda" else torch.float32
            return getattr(model, "_studio_compute_dtype", fallback)
    return None


def keep_lora_in_compute_dtype(model, adapter: str) -> None:
    """peft creates LoRA layers in the base weights' dtype; under fp8 storage move them to compute dtype."""
    dtype = lora_compute_dtype(model)
    if dtype is None:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in ("lora_A", "lora_B"):
                layers = getattr(module, attr, None)
                if layers is not None and adapter in layers:
                    layers[adapter].to(dtype)
