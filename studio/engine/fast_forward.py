"""The batched forward of unfused LoRA adapters (:class:`FastLoraLinear`), swapped onto peft's layers.

For the active, unfused adapters ``a₁…aₙ`` of a module with scales ``s₁…sₙ``::

    y = base(x);  y += (x @ [s₁A₁; …; sₙAₙ]ᵀ) @ [B₁ … Bₙ]ᵀ      (one addmm_)

instead of peft's ``y = y + B(A(x)) * s`` per adapter, which allocates and sweeps two
full-size ``[tokens, out]`` temporaries per adapter. Zero-weight adapters cost nothing.

Unlike peft's forward, a module with *some* adapters fused (``fuse(model,
adapter_names=subset)``) still runs its other active adapters unfused on top of the
fused weight; peft would silently skip them. And peft's own ``merge``/``unmerge`` on these
layers (diffusers' ``fuse_lora``/``unfuse_lora``, ``disable_lora`` while fused) go through
the same exact backup as :func:`studio.engine.fuse.fuse`/``unfuse``.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from studio.engine import fuse as fusing
from studio.engine.lora_walk import lora_layers

__all__ = ["FastLoraLinear", "disable_fast_forward", "enable_fast_forward"]


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

    (Dropout is the only thing that differs in training mode; with peft's default
    ``Identity`` dropout the fast path runs in either mode.) Falls back to peft's own
    forward whenever gradients flow, a training-mode module has a real dropout, an
    adapter is a peft variant (DoRA, …), per-sample ``adapter_names`` are passed, dtypes
    or devices differ, or a hook (layerwise casting, sequential offload) wraps the LoRA
    factors. The class is swapped onto existing peft layers by :func:`enable_fast_forward`;
    everything else is peft's.
    """

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """peft's merge, after keeping a backup of the original weights (see :mod:`studio.engine.fuse`)."""
        fusing.keep_backup(self)
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        """The backup copied back (exact) instead of peft's subtraction; peft's own without a backup."""
        if not fusing.restore_backup(self):
            super().unmerge()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or self.disable_adapters:
            return super().forward(x, *args, **kwargs)
        lora_a, scaling, merged = self.lora_A, self.scaling, self.merged_adapters
        unfused = [a for a in self.active_adapters if a in lora_a and a not in merged]
        if torch.is_grad_enabled() and x.requires_grad:  # peft's forward, but not skipping the unfused ones
            return self._loop_forward(x, unfused) if merged else super().forward(x, *args, **kwargs)
        names = [a for a in unfused if scaling[a] != 0.0]
        if not names and not any(a in self.lora_variant for a in unfused):
            return self.base_layer(x)
        a_layers = [lora_a[n] for n in names]
        b_layers = [self.lora_B[n] for n in names]
        dtype = a_layers[0].weight.dtype if a_layers else x.dtype
        if (
            any(n in self.lora_variant for n in unfused)
            or (self.training and any(type(self.lora_dropout[n]) is not nn.Identity for n in names))
            or not all(_plain(m) for m in (*a_layers, *b_layers))
            or any(m.weight.dtype != dtype for m in (*a_layers, *b_layers))
            or (torch.is_grad_enabled() and any(m.weight.requires_grad for m in a_layers))
        ):
            return self._loop_forward(x, unfused) if merged else super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        if result.dtype != dtype or result.device != a_layers[0].weight.device:
            return self._loop_forward(x, unfused) if merged else super().forward(x, *args, **kwargs)
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

    def _loop_forward(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """peft's per-adapter loop over ``names`` only (the unfused adapters of a partly fused module)."""
        result = self.base_layer(x)
        result_dtype = result.dtype
        for name in names:
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            x = self._cast_input_dtype(x, lora_a.weight.dtype)
            if name in self.lora_variant:
                result = self.lora_variant[name].forward(self, active_adapter=name, x=x, result=result)
            else:
                result = result + lora_b(lora_a(self.lora_dropout[name](x))) * self.scaling[name]
        return result.to(result_dtype)

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


def enable_fast_forward(model: nn.Module) -> int:
    """Give every plain peft LoRA ``Linear`` of ``model`` the batched forward; returns how many changed."""
    changed = 0
    for layer in lora_layers(model):
        if type(layer) is PeftLoraLinear:
            layer.__class__ = FastLoraLinear
            changed += 1
    return changed


def disable_fast_forward(model: nn.Module) -> int:
    """Back to peft's own forward (for comparisons); returns how many changed."""
    changed = 0
    for layer in lora_layers(model):
        if type(layer) is FastLoraLinear:
            layer.__class__ = PeftLoraLinear
            layer.__dict__.pop("_studio_scale", None)
            changed += 1
    return changed
