"""A LoRA state dict in the PEFT layout (``<module>.lora_A.weight``, ``lora_B.weight``, ``lora_B.bias``),
read the same way by the peft-layer path (:mod:`studio.engine.lora_ops`) and the LoRA room
(:mod:`studio.engine.lora_slots`): grouped by module, each module's factors checked against its layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["LORA_PARAMS", "checked_factors", "group_by_module"]

LORA_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_B.bias")


def group_by_module(
    state_dict: Mapping[str, torch.Tensor], prefix: str | None, refuse: Callable[[str], Exception]
) -> dict[str, dict[str, torch.Tensor]]:
    """module name → {``lora_A.weight``, ``lora_B.weight``, ``lora_B.bias``} of a PEFT-layout state dict.

    Keys outside ``prefix.`` are skipped; any other tensor raises ``refuse(key)``.
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    lead = f"{prefix}." if prefix else ""
    for key, tensor in state_dict.items():
        if lead:
            if not key.startswith(lead):
                continue
            key = key[len(lead) :]
        param = next((p for p in LORA_PARAMS if key.endswith("." + p)), None)
        if param is None:
            raise refuse(key)
        modules.setdefault(key[: -len(param) - 1], {})[param] = tensor
    return modules


def checked_factors(
    name: str, params: Mapping[str, torch.Tensor], in_features: int, out_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (down, up) factors of one module's LoRA, refused unless they fit an ``in → out`` Linear."""
    a, b = params.get("lora_A.weight"), params.get("lora_B.weight")
    if a is None or b is None:
        raise ValueError(f"{name}: an incomplete LoRA pair (lora_A without lora_B or the other way round)")
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"{name}: LoRA factors of shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    if a.shape[1] != in_features or b.shape[0] != out_features:
        raise ValueError(
            f"{name}: the LoRA is shaped for a {a.shape[1]}→{b.shape[0]} layer but the layer is "
            f"{in_features}→{out_features}"
        )
    return a, b
