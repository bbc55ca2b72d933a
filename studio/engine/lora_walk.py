"""Finding the peft LoRA layers of a diffusers model (shared by loading, fusing and the fast forward)."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

__all__ = ["adapter_names", "group_offloaded", "lora_layers", "slots"]


def slots(model: nn.Module) -> list[tuple[nn.Module, str, BaseTunerLayer]]:
    """(parent, child name, layer) of every peft tuner layer, without descending into them."""
    found: list[tuple[nn.Module, str, BaseTunerLayer]] = []
    stack = [model]
    while stack:
        module = stack.pop()
        for name, child in module._modules.items():
            if child is None:
                continue
            if isinstance(child, BaseTunerLayer):
                found.append((module, name, child))
            else:
                stack.append(child)
    return found


def lora_layers(model: nn.Module) -> list[BaseTunerLayer]:
    """Every peft tuner layer (LoRA layers) of ``model``."""
    return [layer for _, _, layer in slots(model)]


def adapter_names(model: nn.Module) -> set[str]:
    """The adapters loaded anywhere in ``model``."""
    names: set[str] = set()
    for layer in lora_layers(model):
        names.update(layer._all_available_adapter_names())
    return names


def group_offloaded(model: nn.Module) -> bool:
    """Whether diffusers' group offloading is enabled on ``model``."""
    try:
        from diffusers.hooks.group_offloading import _is_group_offload_enabled

        return bool(_is_group_offload_enabled(model))
    except Exception:
        return False
