"""The size of the base weights a LoRA changes: ``‖W‖²`` and ``‖b‖²`` of every Linear of a transformer.

The stack doctor divides a LoRA's weight change by these. They are read once per loaded
model, at load time (:meth:`studio.engine.manager.PipelineManager.load_model` keeps them),
before any LoRA is loaded or fused, so they are the norms of the model's own weights and
the doctor never has to touch the model (or wait for its lock) again.

Each weight is reduced in float32 in chunks, so bf16/fp8 storage and big layers cost no
full-size float32 copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_CHUNK = 1 << 22  # elements per reduction step (16 MB in float32)


@dataclass(frozen=True)
class ModuleNorm:
    """``‖W‖²`` and ``‖b‖²`` (0 without bias) of one Linear, with its shape."""

    weight_sq: float
    bias_sq: float
    in_features: int
    out_features: int

    @property
    def total_sq(self) -> float:
        """``‖[W | b]‖²``: the doctor counts a bias as one more column of the weight."""
        return self.weight_sq + self.bias_sq


def squared_norm(tensor: torch.Tensor, device: str | torch.device | None = None) -> float:
    """``Σ x²`` of a tensor, read in float32 chunks (any float dtype, incl. fp8), summed in float64.

    ``device``: where to reduce (e.g. ``"cuda"`` for weights still on the CPU: faster there).
    """
    flat = tensor.detach().reshape(-1)
    total = 0.0
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start : start + _CHUNK].to(device=device or flat.device, dtype=torch.float32)
        total += float(torch.dot(part, part))
    return total


def _base(module: nn.Module) -> nn.Module:
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def weight_norms(transformer: nn.Module, device: str | torch.device | None = None) -> dict[str, ModuleNorm]:
    """Module name → :class:`ModuleNorm` for every ``nn.Linear`` (the base layer under a LoRA wrapper).

    Call it before LoRAs are fused (a fused weight holds the LoRA's change too) and before
    offload hooks move weights away (layers on the ``meta`` device are left out).
    """
    norms: dict[str, ModuleNorm] = {}
    with torch.no_grad():
        for name, module in transformer.named_modules():
            base = _base(module)
            if type(base) is not nn.Linear or name.endswith(".base_layer"):
                continue
            if any(part in ("lora_A", "lora_B") for part in name.split(".")):
                continue
            bias = base.bias
            if base.weight.is_meta:
                continue
            norms[name] = ModuleNorm(
                weight_sq=squared_norm(base.weight, device),
                bias_sq=squared_norm(bias, device) if bias is not None else 0.0,
                in_features=base.in_features,
                out_features=base.out_features,
            )
    return norms


def pipeline_norms(pipe, device: str | None = None) -> dict[str, dict[str, ModuleNorm]]:
    """Component (``transformer``, ``transformer_2``) → :func:`weight_norms` of a Wan pipeline's experts.

    ``device``: the device the model will run on; with ``"cuda"`` the reductions run there.
    """
    device = "cuda" if device == "cuda" else None
    out = {}
    for component in ("transformer", "transformer_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            out[component] = weight_norms(model, device)
    return out
