"""Fast LoRA operations on a diffusers transformer, with the same results as the diffusers/peft calls.

The adapters stay ordinary peft ``LoraLayer`` modules (so every diffusers/peft call
keeps working on the model), but the hot operations skip the generic machinery:

==============================  ==============================================  ==========================================
here                            replaces                                        why it is faster
==============================  ==============================================  ==========================================
``set_adapter_weights``         ``enable_lora``/``disable_lora`` +              writes the scales straight into each LoRA
                                ``set_adapters(names, weights)``                layer (no per-parameter ``requires_grad``
                                                                                walk, no generic weight expansion)
``load_adapter``                ``load_lora_weights``/``load_lora_adapter``     no LoraConfig matching over every module
                                                                                name, no random init of factors that are
                                                                                overwritten at once, no state-dict copy:
                                                                                the tensors read from the file *become* the
                                                                                adapter (zero-copy when dtype and device
                                                                                match the model)
``delete_adapters``             ``delete_adapters`` / ``unload_lora``           drops every trace of the adapter, unwraps
                                                                                layers left without adapters (the base runs
                                                                                at full speed) and hands freed memory back to
                                                                                the OS (``malloc_trim``): no creep over swaps
``fuse`` / ``unfuse``           ``fuse_lora`` / ``unfuse_lora``                 one in-place ``addmm_`` per module for all
                                                                                active adapters, ΔW = B_cat @ (s·A_cat),
                                                                                instead of one full-size delta, one scaled
                                                                                copy and one add per adapter; the unfuse
                                                                                copies a backup back (exact, see
                                                                                :mod:`studio.engine.fuse`)
``enable_fast_forward``         peft's ``Linear.forward``                       unfused adapters in one batched low-rank
                                                                                product per module, accumulated in place
                                                                                (``addmm_``): no full-size temporaries per
                                                                                adapter; zero-weight adapters cost nothing
==============================  ==============================================  ==========================================

This module is the one entry point the manager, the benchmarks and other helpers use:
it holds setting weights, loading and deleting, and re-exports the rest, which lives in
:mod:`studio.engine.fuse` (fusing with exact backups), :mod:`studio.engine.fast_forward`
(:class:`FastLoraLinear`) and :mod:`studio.engine.lora_walk` (finding the LoRA layers).

Everything here is for inference (the studio never trains): adapters are frozen
(``requires_grad=False``) and the fast forward steps aside (falls back to peft's own
forward) whenever gradients flow, a training-mode module has a real dropout, an adapter
is a peft variant (DoRA, …), per-sample ``adapter_names`` are passed, dtypes or devices
differ, or a hook (layerwise casting, sequential offload) wraps the LoRA factors.

Where the manager calls what (``model`` is ``pipe.transformer`` or ``pipe.transformer_2``):
``_set_weights`` → :func:`set_adapter_weights`; ``_load`` → :func:`load_adapter` (falling
back to ``load_lora_weights`` on :class:`UnsupportedLora`); ``_fuse``/``_unfuse`` →
:func:`fuse`/:func:`unfuse`; ``_delete`` → :func:`delete_adapters`; deciding whether to fuse
a render → :func:`fuse_pays_off`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from studio.engine.fast_forward import FastLoraLinear, disable_fast_forward, enable_fast_forward
from studio.engine.fuse import (
    FuseRefused,
    active_lora_modules,
    backup_bytes,
    drop_backup,
    fuse,
    fuse_pays_off,
    fused_scale_kept,
    fusing_pays,
    is_fused,
    lora_flops,
    render_forwards,
    unfuse,
)
from studio.engine.lora_state import checked_factors, group_by_module
from studio.engine.lora_walk import adapter_names, group_offloaded, lora_layers, slots

__all__ = [
    "FastLoraLinear",
    "FuseRefused",
    "UnsupportedLora",
    "active_lora_modules",
    "adapter_names",
    "backup_bytes",
    "delete_adapters",
    "disable_fast_forward",
    "enable_fast_forward",
    "fuse",
    "fuse_pays_off",
    "fusing_pays",
    "is_fused",
    "load_adapter",
    "lora_flops",
    "lora_layers",
    "release_memory",
    "render_forwards",
    "set_adapter_weights",
    "supports_partial_fuse",
    "unfuse",
]


class UnsupportedLora(ValueError):
    """The state dict holds something :func:`load_adapter` does not handle (DoRA, LoKr, …).

    The caller should load it with diffusers' ``load_lora_weights`` instead.
    """


# --------------------------------------------------------------------------- weights
def set_adapter_weights(model: nn.Module, weights: Mapping[str, float]) -> None:
    """Activate exactly the adapters in ``weights`` with those weights; ``{}`` turns LoRA off.

    Same result as ``model.enable_lora(); model.set_adapters(list(weights), list(weights.values()))``
    (or ``model.disable_lora()`` for an empty mapping): each LoRA layer's active adapters
    become ``list(weights)`` and its scale for adapter ``a`` becomes
    ``weights[a] * lora_alpha[a] / r[a]`` (``sqrt(r)`` for rsLoRA). Weights are plain
    numbers (one per adapter and model). Raises ``ValueError`` for a name that is not
    loaded. Fused adapters (see :func:`fuse`) must stay active with the weight they were
    fused with, while the unfused ones change freely (a per-step schedule re-weights the
    unfused part of a partly fused stack between steps); anything else raises
    ``RuntimeError`` and changes nothing (unfuse first). On a model prepared for compiled mode
    (:mod:`studio.engine.compile`) it writes the weights into the LoRA room's scale tensors
    instead (nothing recompiles).
    """
    bank = model.__dict__.get("_studio_lora_bank")
    if bank is not None:  # compiled mode's fixed-size LoRA room (studio.engine.lora_slots): a tensor write
        bank.set_weights(weights)
        return
    names = list(weights)
    values = [float(w) for w in weights.values()]
    known = getattr(model, "peft_config", None)
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"adapter(s) {unknown} are not loaded in this model")
    layers = lora_layers(model)
    by_name = dict(zip(names, values, strict=True))
    for layer in layers:
        for name in layer.merged_adapters:
            if name not in by_name or not fused_scale_kept(layer, name, by_name[name]):
                raise RuntimeError(
                    f"the LoRA {name!r} is fused into the weights: unfuse before changing its weight"
                )
    enabled = bool(names)
    for layer in layers:
        if not enabled:
            layer._disable_adapters = True
            continue
        if isinstance(layer, LoraLayer):
            layer._active_adapter = list(names)
            scaling, alpha, rank, rslora = layer.scaling, layer.lora_alpha, layer.r, layer.use_rslora
            for name, value in zip(names, values, strict=True):
                if name in scaling:
                    r = rank[name]
                    scaling[name] = value * alpha[name] / (math.sqrt(r) if rslora.get(name) else r)
        else:  # another tuner type: the generic per-layer calls diffusers would make
            layer.set_adapter(list(names))
            for name, value in zip(names, values, strict=True):
                layer.set_scale(name, value)
        layer._disable_adapters = False


# --------------------------------------------------------------------------- loading
def _unsupported(key: str) -> UnsupportedLora:
    return UnsupportedLora(f"unsupported LoRA tensor {key!r} (only lora_A/lora_B weights and lora_B bias)")


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` around existing tensors (no allocation, no init)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features = weight.shape[1]
    linear.out_features = weight.shape[0]
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is None:
        linear.register_parameter("bias", None)
    else:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def _wrap(base: nn.Linear, adapter: str) -> FastLoraLinear:
    """A peft LoRA ``Linear`` around ``base`` with no adapter yet (what peft builds, minus the init)."""
    layer = FastLoraLinear.__new__(FastLoraLinear)
    nn.Module.__init__(layer)
    LoraLayer.__init__(layer, base)
    layer.fan_in_fan_out = False
    layer._active_adapter = [adapter]
    layer.is_target_conv_1d_layer = False
    return layer


def _attach(layer: LoraLayer, adapter: str, params: dict[str, torch.Tensor]) -> None:
    """Add ``adapter`` to ``layer`` the way peft's ``update_layer`` does, with the given factors."""
    base = layer.get_base_layer()
    ref = base.weight
    like = {"device": ref.device, "dtype": ref.dtype} if ref.is_floating_point() else {"device": ref.device}
    a = params["lora_A.weight"].to(**like)
    b = params["lora_B.weight"].to(**like)
    bias = params.get("lora_B.bias")
    bias = bias.to(**like) if bias is not None else None
    rank = a.shape[0]
    layer.r[adapter] = rank
    layer.lora_alpha[adapter] = rank  # no alpha in a converted state dict: scale 1, as diffusers does
    layer.scaling[adapter] = 1.0
    layer.use_rslora[adapter] = False
    layer.use_dora[adapter] = False
    layer.lora_bias[adapter] = bias is not None
    layer.lora_dropout[adapter] = nn.Identity()
    layer.lora_A[adapter] = _new_linear(a, None)
    layer.lora_B[adapter] = _new_linear(b, bias)


def load_adapter(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    adapter_name: str,
    *,
    prefix: str | None = "transformer",
) -> int:
    """Load a PEFT-layout LoRA state dict into ``model`` as ``adapter_name``; returns the modules it covers.

    Same result as ``model.load_lora_adapter(state_dict, adapter_name=..., prefix=prefix)``
    (and so as the pipeline's ``load_lora_weights`` of that state dict): an adapter with
    ``r`` = the rank of each module and ``lora_alpha = r`` (scale 1; the studio's
    converter has folded any alpha into the factors), a ``LoraConfig`` in
    ``model.peft_config``, and afterwards only this adapter active, as diffusers leaves it.
    The tensors are used as they are when their dtype and device match the model's
    weights (no copy; one state dict loaded into both experts is shared by them, read
    only); keep no other reference if you want them freed on delete.

    Checks everything before changing the model: an unknown module, a non-Linear target or
    a shape that does not fit raises ``ValueError`` and leaves the model as it was;
    tensors other than ``lora_A.weight``/``lora_B.weight``/``lora_B.bias`` raise
    :class:`UnsupportedLora` (load those with diffusers). A model with group offloading
    enabled is loaded through diffusers (its hooks must be re-applied). With sequential CPU
    offload (accelerate hooks on every leaf) load through the pipeline's
    ``load_lora_weights`` instead, which lifts the offload while it loads.
    """
    if group_offloaded(model):
        model.load_lora_adapter(dict(state_dict), adapter_name=adapter_name, prefix=prefix)
        enable_fast_forward(model)
        return len(group_by_module(state_dict, prefix, _unsupported))
    modules = group_by_module(state_dict, prefix, _unsupported)
    if not modules:
        raise ValueError("the state dict holds no LoRA weights for this model")
    config = getattr(model, "peft_config", None) or {}
    if adapter_name in config or adapter_name in adapter_names(model):
        raise ValueError(
            f"Adapter name {adapter_name} already in use in the model - please select a new adapter name."
        )

    targets: list[tuple[str, nn.Module, dict[str, torch.Tensor]]] = []
    for name, params in modules.items():
        try:
            target = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no layer named {name}") from None
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(target, BaseTunerLayer) and not isinstance(target, PeftLoraLinear):
            raise UnsupportedLora(f"{name} already holds a non-LoRA adapter")
        if type(base) is not nn.Linear:
            raise ValueError(f"{name} is not a Linear layer, so a LoRA cannot be applied to it")
        checked_factors(name, params, base.in_features, base.out_features)
        bias = params.get("lora_B.bias")
        if bias is not None and tuple(bias.shape) != (base.out_features,):
            raise ValueError(f"{name}: its lora_B bias does not have the layer's {base.out_features} outputs")
        if bias is not None and base.bias is None:
            raise UnsupportedLora(f"{name}: a LoRA bias on a layer without bias")
        targets.append((name, target, params))

    peft_state = {
        f"{name}.{param}": tensor for name, params in modules.items() for param, tensor in params.items()
    }
    lora_config = _lora_config(peft_state)

    for name, target, params in targets:
        if isinstance(target, LoraLayer):
            layer = target
        else:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = _wrap(target, adapter_name)
            setattr(parent, child, layer)
        _attach(layer, adapter_name, params)
        layer.train(layer.get_base_layer().training)
    if getattr(model, "peft_config", None) is None:
        model.peft_config = {}
    model.peft_config[adapter_name] = lora_config
    model._hf_peft_config_loaded = True
    for layer in lora_layers(model):  # diffusers leaves the newest adapter as the only active one
        layer._active_adapter = [adapter_name]
    enable_fast_forward(model)
    return len(targets)


def _lora_config(peft_state: dict[str, torch.Tensor]):
    """The ``LoraConfig`` diffusers would record for this (unprefixed, PEFT-layout) state dict."""
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig

    ranks = {f"^{k}": v.shape[1] for k, v in peft_state.items() if "lora_B" in k and v.ndim > 1}
    return LoraConfig(**get_peft_kwargs(ranks, None, peft_state))


# --------------------------------------------------------------------------- deleting
def delete_adapters(model: nn.Module, names: str | Iterable[str], *, release: bool = True) -> None:
    """Delete adapters from ``model``, leaving no tensor, config or module of theirs behind.

    Same result as ``model.delete_adapters(names)`` (the same adapters stay active, by
    peft's rule, minus its warning per deleted name), and when no adapter is left, as
    ``model.unload_lora()``: a layer left without adapters is replaced by its base
    ``Linear`` again, and the model's ``peft_config`` goes. With ``release`` the freed
    memory is handed back to the OS (:func:`release_memory`), and a layer left without
    adapters drops its fuse backup (:mod:`studio.engine.fuse`).
    Raises ``ValueError`` while a deleted adapter is fused (unfuse first).
    """
    doomed = {names} if isinstance(names, str) else set(names)
    found = slots(model)
    merged = sorted({a for _, _, layer in found for a in layer.merged_adapters} & doomed)
    if merged:
        raise ValueError(
            f"Cannot delete adapter(s) {merged} while they are merged. Please unmerge them first."
        )
    if group_offloaded(model):
        model.delete_adapters(sorted(doomed))
        for layer in lora_layers(model):  # diffusers keeps emptied layers; their backups go
            if not layer._all_available_adapter_names():
                drop_backup(layer)
        if release:
            release_memory()
        return
    for parent, child, layer in found:
        active = list(layer.active_adapters)
        for attr in (*layer.adapter_layer_names, *layer.other_param_names):
            container = getattr(layer, attr, None)
            if container is None or not hasattr(container, "keys"):
                continue
            for adapter in doomed & set(container.keys()):
                del container[adapter]
        for adapter in doomed:
            if isinstance(layer, LoraLayer):
                layer.lora_variant.pop(adapter, None)
            if adapter in layer.frozen_peft_weight_names:
                del layer.frozen_peft_weight_names[adapter]
        getattr(layer, "_caches", {}).clear()
        layer.__dict__.pop("_studio_scale", None)
        remaining = layer._all_available_adapter_names()
        if any(a in doomed for a in active):
            # peft's rule, without its warning: the other active adapters stay active; if none
            # is left, the first remaining adapter by name becomes the active one.
            kept = [a for a in active if a not in doomed]
            layer._active_adapter = kept or remaining[:1]
        if not remaining:
            drop_backup(layer)  # no adapter left, none fused: the weight is the original again
            if hasattr(layer, "base_layer"):
                setattr(parent, child, layer.get_base_layer())
    config = getattr(model, "peft_config", None)
    if config is not None:
        for adapter in doomed:
            config.pop(adapter, None)
        if not config and not lora_layers(model):
            del model.peft_config
            model._hf_peft_config_loaded = None
    if release:
        release_memory()


_libc: Any = None


def release_memory() -> None:
    """Collect garbage and give freed memory back: the CUDA cache and glibc's free heap pages.

    Tensors freed by a delete go back to glibc's heap, which keeps them (resident) for
    reuse; after many load/delete cycles of different sizes that shows up as creeping
    resident memory. ``malloc_trim(0)`` returns the free pages to the OS.
    """
    global _libc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def supports_partial_fuse(model: nn.Module) -> bool:
    """Whether some adapters can be fused while others keep running unfused: every LoRA layer has the
    studio's fast forward (peft's own forward runs a layer with a fused adapter as fused only)."""
    return all(type(layer) is FastLoraLinear for layer in lora_layers(model))
