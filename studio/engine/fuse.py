"""Fusing LoRAs into the base weights, and undoing it exactly (bit for bit, in any dtype).

``W ← round(W + ΔW)`` then ``W ← round(W − ΔW)`` is not ``W`` once rounded to bf16 or
fp16 (nor, to the last bit, in float32), and the error grows with every fuse → weight
change → unfuse cycle. So the first fuse into a module keeps a **backup** of its base
weight (and bias) on the host, the fuse writes ``W + ΔW``, and :func:`unfuse` copies the
backup back instead of subtracting. The backup stays while the module has adapters
(the next fuse after a weight change needs no new copy) and goes when its last adapter
is deleted (:func:`drop_backup`, called by ``lora_ops.delete_adapters``). It costs the
touched weights' size in host RAM once (:func:`backup_bytes`; the VRAM/RAM estimate
counts it), and a restore is a plain copy, cheaper than the matmul it replaces.

Every path that writes into a weight goes through the same backup: the one-matmul
fast fuse of plain LoRA ``Linear`` layers (converted LoKr/LoHa factors and ``diff``
full-rank pairs are plain LoRA factors; ``diff_b`` biases are the LoRA biases), peft's
own ``merge`` for layers the fast fuse does not handle (DoRA and other variants,
``fan_in_fan_out``), and models under diffusers' group offloading (the writes are in
place, into the offloaded copy). Weights stored in fp8 (layerwise casting) or not in
memory at all (``meta``: sequential offload) are refused before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from studio.engine.lora_walk import lora_layers

__all__ = [
    "FuseRefused",
    "WeightBackup",
    "active_lora_modules",
    "backup_bytes",
    "drop_backup",
    "fuse",
    "fuse_pays_off",
    "fused_scale_kept",
    "fusing_pays",
    "is_fused",
    "keep_backup",
    "lora_flops",
    "render_forwards",
    "restore_backup",
    "unfuse",
    "unfuse_layer",
]

_BACKUP = "_studio_backup"
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))  # fmt: skip


class FuseRefused(ValueError):
    """These weights cannot take a fused LoRA (fp8 storage, weights not in memory); nothing was changed."""


@dataclass(frozen=True)
class WeightBackup:
    """The original base weight (and bias) of one module, kept on the host while LoRAs are fused into it."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)


def is_fused(model: nn.Module) -> bool:
    return any(layer.merged for layer in lora_layers(model))


def backup_bytes(model: nn.Module) -> int:
    """Host bytes held by fuse backups in ``model`` right now."""
    return sum(b.nbytes for layer in lora_layers(model) if (b := layer.__dict__.get(_BACKUP)) is not None)


def drop_backup(layer: nn.Module) -> None:
    """Forget ``layer``'s backup (its adapters are gone; the weight is the original again)."""
    layer.__dict__.pop(_BACKUP, None)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    # Plain (pageable) host memory: torch's pinned-memory allocator rounds each block up to a
    # power of two, which would cost up to twice the weight's size for the big FFN matrices.
    return tensor.detach().to("cpu", copy=True)


def keep_backup(layer: BaseTunerLayer) -> None:
    """Back up ``layer``'s base weight (and bias) before a first fuse writes into it; a no-op after that.

    Only an unfused layer is backed up (a layer fused by peft without a backup is not the original).
    """
    if _BACKUP in layer.__dict__ or layer.merged:
        return
    base = layer.get_base_layer()
    weight, bias = getattr(base, "weight", None), getattr(base, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.device.type == "meta":
        return
    layer.__dict__[_BACKUP] = WeightBackup(
        _host_copy(weight), _host_copy(bias) if isinstance(bias, torch.Tensor) else None
    )


@torch.no_grad()
def restore_backup(layer: BaseTunerLayer) -> bool:
    """Copy the backup back into a fused layer and mark it unfused; False (nothing done) without a backup."""
    backup = layer.__dict__.get(_BACKUP)
    if backup is None:
        return False
    base = layer.get_base_layer()
    base.weight.data.copy_(backup.weight)
    if backup.bias is not None:
        base.bias.data.copy_(backup.bias)
    caches = getattr(layer, "_caches", None)
    if caches is not None:
        for name in layer.merged_adapters:
            caches.pop(f"{name}-weight_norm", None)  # DoRA's merge leaves its weight norm here
    layer.merged_adapters = []
    return True


def _check_storage(layer: BaseTunerLayer, name: str) -> None:
    weight = getattr(layer.get_base_layer(), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise FuseRefused(f"{name} has no weight tensor to fuse a LoRA into")
    if weight.dtype in _FP8:
        raise FuseRefused(
            "LoRAs cannot be fused into fp8-stored weights (rounding the sum to fp8 would change the base "
            "model); run them unfused, or load the model in bf16."
        )
    if weight.device.type == "meta":
        raise FuseRefused(
            "the weights are not in memory (sequential offload keeps them elsewhere), so LoRAs cannot be "
            "fused into them; run them unfused or choose another memory mode."
        )


def _fusable(layer: BaseTunerLayer, names: list[str]) -> bool:
    """A plain LoRA ``Linear`` the one-matmul fuse handles (else peft's own ``merge`` runs)."""
    return (
        isinstance(layer, PeftLoraLinear)
        and not layer.fan_in_fan_out
        and not any(n in layer.lora_variant for n in names)
        and type(layer.get_base_layer()) is nn.Linear
    )


def _factors(layer: LoraLayer, names: list[str], scales: list[float], dtype: torch.dtype):
    """B_cat ``[out, ΣR]`` and (scales · A)_cat ``[ΣR, in]`` in ``dtype``, on the layer's device."""
    a_parts, b_parts = [], []
    for name, scale in zip(names, scales, strict=True):
        a_parts.append(layer.lora_A[name].weight.to(dtype) * scale)
        b_parts.append(layer.lora_B[name].weight.to(dtype))
    a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, 0)
    b = b_parts[0] if len(b_parts) == 1 else torch.cat(b_parts, 1)
    return b, a


@torch.no_grad()
def _add_delta(layer: LoraLayer, names: list[str], scales: list[float]) -> None:
    """``W += B_cat @ (s·A_cat)`` (and the LoRA biases), in place."""
    base = layer.get_base_layer()
    weight = base.weight
    live = [(n, s) for n, s in zip(names, scales, strict=True) if s != 0.0]
    if not live:
        return
    # CPU half-precision matmuls are slow and lossy: do the product in float32 there, as peft does.
    slow_half = weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16)
    compute = torch.float32 if slow_half else weight.dtype
    b, a = _factors(layer, [n for n, _ in live], [s for _, s in live], compute)
    if compute == weight.dtype:
        weight.addmm_(b, a)
    else:
        weight.copy_(weight.to(compute).addmm_(b, a))
    for name, scale in live:
        if layer.lora_bias.get(name):
            base.bias.add_(layer.lora_B[name].bias.to(base.bias.dtype), alpha=scale)


def _to_fuse(layer: BaseTunerLayer, only: list[str] | None) -> list[str]:
    wanted = layer.active_adapters if only is None else only
    if isinstance(layer, LoraLayer):
        return [n for n in wanted if n in layer.lora_A and n not in layer.merged_adapters]
    return [n for n in wanted if n not in layer.merged_adapters]


def fuse(model: nn.Module, adapter_names: Iterable[str] | None = None) -> None:
    """Fuse the active adapters (or just ``adapter_names``) into the base weights.

    Same result as diffusers' ``fuse_lora()``: one in-place ``W += B_cat @ (s·A_cat)`` per
    module for all adapters together, recorded as merged in peft's bookkeeping
    (``merged_adapters``). Adapters already fused stay as they are; with
    ``adapter_names`` the other active adapters stay unfused and keep running on top of
    the fused weight (the fast forward handles partly fused modules). The original weights
    are backed up first, so :func:`unfuse` restores them bit for bit. Raises
    :class:`FuseRefused` (and changes nothing) for fp8-stored or offloaded-to-meta weights.
    """
    only = None if adapter_names is None else list(adapter_names)
    plan = [(layer, names) for layer in lora_layers(model) if (names := _to_fuse(layer, only))]
    for layer, names in plan:
        _check_storage(layer, ", ".join(names))
    for layer, names in plan:
        if layer.merged and _BACKUP not in layer.__dict__:
            layer.merge(adapter_names=names)  # fused by peft itself before: stay in its bookkeeping
            continue
        keep_backup(layer)
        if _fusable(layer, names):
            _add_delta(layer, names, [float(layer.scaling[n]) for n in names])
            layer.merged_adapters = [*layer.merged_adapters, *names]
        else:
            layer.merge(adapter_names=names)  # peft's merge (DoRA, …): the backup makes it undoable exactly


def unfuse_layer(layer: BaseTunerLayer) -> None:
    """Take every fused adapter out of one layer: the backup copied back (peft's unmerge if it has none)."""
    if layer.merged and not restore_backup(layer):
        layer.unmerge()  # fused by peft itself before any backup: only it knows how


def unfuse(model: nn.Module) -> None:
    """Take every fused adapter out of the base weights again; same result as ``unfuse_lora()``, but exact."""
    for layer in lora_layers(model):
        unfuse_layer(layer)


def lora_flops(modules: Iterable[tuple[int, int, int]], tokens: int) -> tuple[int, int]:
    """Matmul FLOPs of unfused LoRA modules, each given as ``(summed rank, in_features, out_features)``.

    Returns ``(fuse_cost, forward_cost)``: a fuse costs 2·R·in·out per module, counted twice
    (the restore of the backup on unfuse, and the one-time backup copy, are memory copies of
    the same size); every forward of ``tokens`` tokens with the adapters unfused costs
    2·tokens·R·(in+out) extra (the two low-rank products).
    """
    fuse_cost = forward_cost = 0
    for rank, fan_in, fan_out in modules:
        fuse_cost += 4 * rank * fan_in * fan_out
        forward_cost += 2 * tokens * rank * (fan_in + fan_out)
    return fuse_cost, forward_cost


def fusing_pays(fuse_cost: int, forward_cost: int, forwards: int) -> bool:
    """Whether ``forwards`` unfused forwards cost more than one fuse + unfuse (see :func:`lora_flops`)."""
    return fuse_cost > 0 and forwards * forward_cost > fuse_cost


def active_lora_modules(
    model: nn.Module, adapter_names: Iterable[str] | None = None
) -> list[tuple[int, int, int]]:
    """``(summed rank, in, out)`` of each LoRA layer of ``model`` with active, non-zero-weight, unfused
    adapters (only those of ``adapter_names`` when given: a schedule keeps some unfused beside fused ones)."""
    only = None if adapter_names is None else set(adapter_names)
    modules = []
    for layer in lora_layers(model):
        if not isinstance(layer, LoraLayer) or layer.disable_adapters:
            continue
        rank = sum(
            layer.r[a]
            for a in layer.active_adapters
            if a in layer.lora_A
            and layer.scaling.get(a)
            and a not in layer.merged_adapters
            and (only is None or a in only)
        )
        if rank:
            modules.append((rank, layer.in_features, layer.out_features))
    return modules


def render_forwards(
    *, frames: int, height: int, width: int, steps: int, guidance: float, experts: int
) -> tuple[int, int]:
    """``(tokens, forwards)`` of a render, as the fuse decision counts them.

    Tokens of one forward: ``((frames-1)//4 + 1) · (height/16) · (width/16)``. Forwards per
    expert: its share of the steps, twice that with CFG (guidance > 1).
    """
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    forwards = max(1, steps // max(1, experts)) * (2 if guidance > 1.0 else 1)
    return tokens, forwards


def fuse_pays_off(
    model: nn.Module, tokens: int, steps: int, adapter_names: Iterable[str] | None = None
) -> bool:
    """Whether fusing the active adapters (or those of ``adapter_names``), and unfusing afterwards, beats
    running them unfused.

    Counts matmul FLOPs (:func:`lora_flops`). ``steps`` is the number of forwards this model
    runs before the adapters change (e.g. its share of the denoising steps, twice that with
    CFG). On a 480p Wan2.2 render (32,760 tokens) one step already pays for the fuse; on a
    tiny demo render it does not. The stack doctor counts the same way from the LoRA files
    (:mod:`studio.doctor.cost`).
    """
    return fusing_pays(*lora_flops(active_lora_modules(model, adapter_names), tokens), steps)


def fused_scale_kept(layer: BaseTunerLayer, name: str, weight: float) -> bool:
    """Whether giving fused adapter ``name`` the user weight ``weight`` leaves its scale as fused."""
    if not isinstance(layer, LoraLayer) or name not in layer.scaling:
        return False
    r = layer.r[name]
    scale = weight * layer.lora_alpha[name] / (math.sqrt(r) if layer.use_rslora.get(name) else r)
    return scale == layer.scaling[name]
