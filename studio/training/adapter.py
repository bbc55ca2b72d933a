"""The LoRA being trained, as a peft adapter inside the studio's own transformer.

It is added with diffusers' ``add_adapter`` (peft's standard injection) next to whatever
LoRAs the render stack has loaded, under a name of its own; its factors are float32
master weights (the base may be bf16) and the only parameters that require gradients.
``A`` starts as peft initialises it (Kaiming-uniform, here from the run's seeded
generator) and ``B`` at zero, so the untrained adapter changes nothing.
"""

from __future__ import annotations

import math
import warnings

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from studio.engine import lora_ops

ADAPTER = "studio_training"


def lora_modules(model: nn.Module) -> dict[str, LoraLayer]:
    """Module name → LoRA layer holding the training adapter, in a fixed order."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            found[name] = module
    return dict(sorted(found.items()))


def parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the training adapter: ``<module>.lora_A.weight`` / ``lora_B.weight``."""
    out = []
    for name, layer in lora_modules(model).items():
        out.append((f"{name}.lora_A.weight", layer.lora_A[ADAPTER].weight))
        out.append((f"{name}.lora_B.weight", layer.lora_B[ADAPTER].weight))
    return out


def attach(
    model: nn.Module, *, rank: int, alpha: float, target_regex: str, generator: torch.Generator
) -> int:
    """Add the training adapter to ``model``; returns how many modules it covers."""
    from peft import LoraConfig

    if ADAPTER in (getattr(model, "peft_config", None) or {}):
        detach(model)
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_regex, lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.add_adapter(config, adapter_name=ADAPTER)
    lora_ops.enable_fast_forward(model)
    modules = lora_modules(model)
    if not modules:
        detach(model)
        raise ValueError("the target modules match no layer of this model")
    for layer in modules.values():
        a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        a.to(torch.float32)
        b.to(torch.float32)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(a.weight.shape[1])  # kaiming_uniform_(a=sqrt(5)), as peft and nn.Linear
            a.weight.copy_(
                (torch.rand(a.weight.shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound
            )
            b.weight.zero_()
    for module in model.modules():  # only the training adapter learns
        if isinstance(module, LoraLayer):
            for key, sub in module.lora_A.items():
                sub.requires_grad_(key == ADAPTER)
            for key, sub in module.lora_B.items():
                sub.requires_grad_(key == ADAPTER)
    return len(modules)


def detach(model: nn.Module) -> None:
    """Remove the training adapter (and gradient checkpointing); the stack's adapters stay."""
    if getattr(model, "gradient_checkpointing", False):
        model.disable_gradient_checkpointing()
    if ADAPTER in lora_ops.adapter_names(model) or ADAPTER in (getattr(model, "peft_config", None) or {}):
        lora_ops.delete_adapters(model, [ADAPTER])


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A float32 CPU copy of the adapter's factors, by parameter name."""
    return {name: p.detach().float().cpu().clone() for name, p in parameters(model)}


@torch.no_grad()
def load_tensors(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Set the adapter's factors from :func:`tensors` output (a resumed run)."""
    params = dict(parameters(model))
    if set(params) != set(values):
        missing = sorted(set(params) ^ set(values))[:3]
        raise ValueError(f"the checkpoint's LoRA does not fit this model ({', '.join(missing)} …)")
    for name, p in params.items():
        if tuple(values[name].shape) != tuple(p.shape):
            raise ValueError(
                f"{name}: shape {tuple(values[name].shape)} in the checkpoint, {tuple(p.shape)} here"
            )
        p.copy_(values[name].to(p))


def rank_alpha(model: nn.Module) -> tuple[int, float]:
    layer = next(iter(lora_modules(model).values()))
    return int(layer.r[ADAPTER]), float(layer.lora_alpha[ADAPTER])
