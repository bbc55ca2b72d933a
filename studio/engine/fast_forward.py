"""The batched unfused LoRA forward: :class:`FastLoraLinear`, swapped onto peft's LoRA ``Linear`` layers
by :func:`studio.engine.lora_ops.enable_fast_forward` (same result as peft's forward to float rounding)."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


def _plain(module: nn.Module) -> bool:
    """No hook changes what this module's weight is at forward time."""
    return not (
        module._forward_pre_hooks
        or module._forward_hooks
        or hasattr(module, "_hf_hook")
        or hasattr(module, "_diffusers_hook")
    )


class FastLoraLinear(PeftLoraLinear):
    """peft's LoRA ``Linear`` with a batched, in-place unfused forward (same result to float rounding).

    For the active adapters ``a₁…aₙ`` with scales ``s₁…sₙ``::

        y = base(x);  y += (x @ [s₁A₁; …; sₙAₙ]ᵀ) @ [B₁ … Bₙ]ᵀ      (one addmm_)

    instead of ``y = y + B(A(x)) * s`` per adapter, which allocates and sweeps two
    full-size ``[tokens, out]`` temporaries per adapter. (Dropout is the only thing that
    differs in training mode; with peft's default ``Identity`` dropout the fast path runs
    in either mode.) The class is swapped onto
    existing peft layers by :func:`enable_fast_forward`; everything else is peft's.
    """

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if (
            args
            or kwargs
            or self.disable_adapters
            or self.merged
            or (torch.is_grad_enabled() and x.requires_grad)
        ):
            return super().forward(x, *args, **kwargs)
        lora_a, scaling = self.lora_A, self.scaling
        names = [a for a in self.active_adapters if a in lora_a and scaling[a] != 0.0]
        if not names:
            return self.base_layer(x)
        a_layers = [lora_a[n] for n in names]
        b_layers = [self.lora_B[n] for n in names]
        dtype = a_layers[0].weight.dtype
        if (
            any(n in self.lora_variant for n in names)
            or (self.training and any(type(self.lora_dropout[n]) is not nn.Identity for n in names))
            or not all(_plain(m) for m in (*a_layers, *b_layers))
            or any(m.weight.dtype != dtype for m in (*a_layers, *b_layers))
            or (torch.is_grad_enabled() and any(m.weight.requires_grad for m in a_layers))
        ):
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        if result.dtype != dtype or result.device != a_layers[0].weight.device:
            return super().forward(x, *args, **kwargs)
        if not result.is_contiguous():
            result = result.contiguous()
        if x.dtype != dtype and self.cast_input_dtype_enabled:
            x = x.to(dtype)
        out = result.view(-1, result.shape[-1])
        flat = x.reshape(-1, x.shape[-1])
        if len(names) == 1:
            h = torch.mm(flat, a_layers[0].weight.t())
            out.addmm_(h, b_layers[0].weight.t(), alpha=scaling[names[0]])
        else:
            a = torch.cat([m.weight for m in a_layers], 0)
            b = torch.cat([m.weight for m in b_layers], 1)
            scale = self._scale_vector(names, a.device, dtype)
            a.mul_(scale.unsqueeze(1))
            out.addmm_(torch.mm(flat, a.t()), b.t())
        for name, layer in zip(names, b_layers, strict=True):
            if self.lora_bias.get(name) and layer.bias is not None:
                out.add_(layer.bias, alpha=scaling[name])
        return result

    def _scale_vector(self, names: list[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Each adapter's scale repeated over its rank rows (cached until names or scales change)."""
        key = (tuple(names), tuple(self.scaling[n] for n in names), device, dtype)
        cached = self.__dict__.get("_studio_scale")
        if cached is not None and cached[0] == key:
            return cached[1]
        values = [self.scaling[n] for n in names for _ in range(self.r[n])]
        vector = torch.tensor(values, dtype=dtype).to(device)
        self.__dict__["_studio_scale"] = (key, vector)
        return vector
