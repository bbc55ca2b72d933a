"""LoRA room of a fixed size in every Linear of a transformer: hot-swapping without changing the graph.

For compiled renders (:mod:`studio.engine.compile`) the LoRAs cannot live in peft layers:
every new adapter adds modules and every weight is a Python float, so each change would
recompile. Instead :func:`install` puts a :class:`SlotLinear` around every ``nn.Linear``
of the model, with buffers of a size fixed at install time:

===============  ===================  ==================================================
buffer           shape                holds
===============  ===================  ==================================================
``lora_A``       ``[rows, in]``       the down factors of all loaded LoRAs, one row range
                                      per LoRA (the same range in every module)
``lora_B``       ``[out, rows]``      the matching up factors
``lora_scale``   ``[rows]`` float32   each row's weight (0 for free rows)
``lora_bias``    ``[slots, out]``     the LoRA biases (``diff_b``), one slot per LoRA with one
``bias_scale``   ``[slots]`` float32  each bias slot's weight
===============  ===================  ==================================================

and the forward is always ``base(x) + ((x @ Aᵀ) · scale) @ Bᵀ + bias_scale @ lora_bias``.
So a weight change or a per-step schedule is a write into ``lora_scale``, loading a LoRA
copies its factors into free rows (zero-padded to the LoRA's widest module), deleting
zeroes them: the shapes never change, nothing recompiles. Free rows are zeros and
contribute exactly nothing. A stack that needs more rows (or bias slots) than there are
raises :class:`SlotsFull`; :meth:`LoraBank.grow` makes more room (the shapes change: one
recompile). Tensors this store cannot hold (DoRA magnitudes, LoKr, ...) raise
:class:`NotHotswappable`.

Factors are stored in the model's dtype, as peft and :mod:`studio.engine.lora_ops` store
them; scales stay float32. The LoRA converter folds ``alpha / r`` into the factors, so a
LoRA's scale in every module is its weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from studio.engine.lora_state import checked_factors, group_by_module

__all__ = [
    "BANK_ATTR",
    "LoraBank",
    "NotHotswappable",
    "SlotLinear",
    "SlotsFull",
    "bank_of",
    "install",
    "uninstall",
]

BANK_ATTR = "_studio_lora_bank"


class SlotsFull(ValueError):
    """The LoRA does not fit the room left; :meth:`LoraBank.grow` to ``rows``/``slots`` and load again."""

    def __init__(self, message: str, *, rows: int, slots: int) -> None:
        super().__init__(message)
        self.rows = rows  # the rows a bank needs to hold everything loaded plus this LoRA
        self.slots = slots


class NotHotswappable(ValueError):
    """The state dict holds something the fixed-size store cannot hold (load it with peft/diffusers)."""


class SlotLinear(nn.Module):
    """An ``nn.Linear`` plus fixed-size LoRA buffers (see the module doc); the base layer is kept as is."""

    def __init__(self, base: nn.Linear, rows: int, slots: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.base_layer = base
        weight = base.weight
        like = {"device": weight.device, "dtype": dtype or weight.dtype}
        self.register_buffer("lora_A", torch.zeros(rows, base.in_features, **like), persistent=False)
        self.register_buffer("lora_B", torch.zeros(base.out_features, rows, **like), persistent=False)
        self.register_buffer("lora_bias", torch.zeros(slots, base.out_features, **like), persistent=False)
        f32 = {"device": weight.device, "dtype": torch.float32}
        self.register_buffer("lora_scale", torch.zeros(rows, **f32), persistent=False)
        self.register_buffer("bias_scale", torch.zeros(slots, **f32), persistent=False)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def get_base_layer(self) -> nn.Linear:
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        a = self.lora_A
        h = (F.linear(x.to(a.dtype), a).float() * self.lora_scale).to(a.dtype)
        delta = F.linear(h, self.lora_B) + (self.bias_scale @ self.lora_bias.float()).to(a.dtype)
        return y + delta.to(y.dtype)

    def resize(self, rows: int, slots: int) -> None:
        """New buffers of ``rows``/``slots`` holding the old contents (only growing)."""
        for name, dim, size in (
            ("lora_A", 0, rows),
            ("lora_B", 1, rows),
            ("lora_scale", 0, rows),
            ("lora_bias", 0, slots),
            ("bias_scale", 0, slots),
        ):
            old = getattr(self, name)
            shape = list(old.shape)
            shape[dim] = size
            new = old.new_zeros(shape)
            new.narrow(dim, 0, old.shape[dim]).copy_(old)
            setattr(self, name, new)

    def extra_repr(self) -> str:
        return f"rows={self.lora_A.shape[0]}, slots={self.lora_bias.shape[0]}"


@dataclass
class _Entry:
    name: str
    start: int
    width: int
    bias_slot: int | None
    ranks: dict[str, int] = field(default_factory=dict)  # module -> rank, for factors()


class LoraBank:
    """The LoRAs held in one model's :class:`SlotLinear` buffers: which rows hold which LoRA, and weights."""

    def __init__(self, modules: dict[str, SlotLinear], rows: int, slots: int) -> None:
        self.modules = modules
        self.rows = rows
        self.slots = slots
        self.entries: dict[str, _Entry] = {}
        self.weights: dict[str, float] = {}

    # ------------------------------------------------------------- queries
    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def used_rows(self) -> int:
        return sum(e.width for e in self.entries.values())

    def nbytes(self) -> int:
        """Bytes of all LoRA buffers (what compiled mode adds to the model, whatever is loaded)."""
        return sum(
            buf.numel() * buf.element_size()
            for m in self.modules.values()
            for buf in m.buffers(recurse=False)
        )

    def factors(self, name: str) -> dict[str, torch.Tensor]:
        """The LoRA ``name`` as the PEFT-layout state dict it was loaded from (copies, unprefixed)."""
        entry = self.entries[name]
        out: dict[str, torch.Tensor] = {}
        for module_name, rank in entry.ranks.items():
            m = self.modules[module_name]
            out[f"{module_name}.lora_A.weight"] = m.lora_A[entry.start : entry.start + rank].clone()
            out[f"{module_name}.lora_B.weight"] = m.lora_B[:, entry.start : entry.start + rank].clone()
            if entry.bias_slot is not None and bool(m.lora_bias[entry.bias_slot].any()):
                out[f"{module_name}.lora_B.bias"] = m.lora_bias[entry.bias_slot].clone()
        return out

    # ------------------------------------------------------------- loading
    def check(self, state_dict: Mapping[str, torch.Tensor], name: str, *, prefix: str | None = "transformer"):
        """Validate ``state_dict`` for this model; returns (modules → params, width, has_bias). Changes nothing."""
        if name in self.entries:
            raise ValueError(
                f"Adapter name {name} already in use in the model - please select a new adapter name."
            )
        modules = group_by_module(state_dict, prefix, _not_hotswappable)
        if not modules:
            raise ValueError("the state dict holds no LoRA weights for this model")
        width, has_bias = 0, False
        for module_name, params in modules.items():
            slot = self.modules.get(module_name)
            if slot is None:
                raise ValueError(f"the model has no Linear layer named {module_name}")
            a, _ = checked_factors(module_name, params, slot.in_features, slot.out_features)
            bias = params.get("lora_B.bias")
            if bias is not None:
                if tuple(bias.shape) != (slot.out_features,):
                    raise ValueError(f"{module_name}: a LoRA bias of shape {tuple(bias.shape)} does not fit")
                has_bias = True
            width = max(width, a.shape[0])
        return modules, width, has_bias

    def load(
        self, state_dict: Mapping[str, torch.Tensor], name: str, *, prefix: str | None = "transformer"
    ) -> int:
        """Copy a PEFT-layout LoRA into free rows as ``name`` (weight 0 until :meth:`set_weights`).

        Returns the number of modules it covers. Raises ``ValueError`` for a LoRA that does
        not fit the model, :class:`NotHotswappable` for tensors other than
        ``lora_A``/``lora_B`` weights and ``lora_B`` biases, :class:`SlotsFull` when the
        room left is too small; in every case the bank is left as it was.
        """
        modules, width, has_bias = self.check(state_dict, name, prefix=prefix)
        start = self._free_range(width)
        bias_slot = self._free_bias_slot() if has_bias else None
        if start is None or (has_bias and bias_slot is None):
            need_rows = max(self.rows, self.used_rows() + width)
            need_slots = self.slots + (1 if has_bias and bias_slot is None else 0)
            raise SlotsFull(
                f"the LoRA needs {width} rows{' and a bias slot' if has_bias else ''}; "
                f"{self.rows - self.used_rows()} of {self.rows} rows are free",
                rows=need_rows,
                slots=need_slots,
            )
        entry = _Entry(name, start, width, bias_slot)
        with torch.no_grad():
            for module_name, params in modules.items():
                m = self.modules[module_name]
                a, b = params["lora_A.weight"], params["lora_B.weight"]
                rank = a.shape[0]
                m.lora_A[start : start + rank].copy_(a)
                m.lora_B[:, start : start + rank].copy_(b)
                bias = params.get("lora_B.bias")
                if bias is not None and bias_slot is not None:
                    m.lora_bias[bias_slot].copy_(bias)
                entry.ranks[module_name] = rank
        self.entries[name] = entry
        self.weights[name] = 0.0
        self._write_scales()
        return len(modules)

    def _free_range(self, width: int) -> int | None:
        """Start of ``width`` free rows (first fit; packs the loaded LoRAs when only a gap is missing)."""
        taken = sorted((e.start, e.start + e.width) for e in self.entries.values())
        cursor = 0
        for lo, hi in taken:
            if lo - cursor >= width:
                return cursor
            cursor = max(cursor, hi)
        if self.rows - cursor >= width:
            return cursor
        if self.rows - self.used_rows() >= width:
            self._pack()
            return self.used_rows()
        return None

    def _pack(self) -> None:
        """Move the loaded LoRAs to the first rows, in order, so the free rows are one range."""
        cursor = 0
        with torch.no_grad():
            for entry in sorted(self.entries.values(), key=lambda e: e.start):
                if entry.start != cursor:  # always downwards: cursor < entry.start
                    old = slice(entry.start, entry.start + entry.width)
                    new = slice(cursor, cursor + entry.width)
                    vacated = slice(max(old.start, new.stop), old.stop)  # old rows the move leaves behind
                    for m in self.modules.values():
                        m.lora_A[new] = m.lora_A[old].clone()
                        m.lora_B[:, new] = m.lora_B[:, old].clone()
                        m.lora_A[vacated].zero_()
                        m.lora_B[:, vacated].zero_()
                    entry.start = cursor
                cursor += entry.width

    def _free_bias_slot(self) -> int | None:
        used = {e.bias_slot for e in self.entries.values()}
        return next((i for i in range(self.slots) if i not in used), None)

    def delete(self, names: str | Iterable[str]) -> None:
        """Remove LoRAs: their rows and bias slot become zeros (free)."""
        doomed = [names] if isinstance(names, str) else list(names)
        with torch.no_grad():
            for name in doomed:
                entry = self.entries.pop(name, None)
                self.weights.pop(name, None)
                if entry is None:
                    continue
                rows = slice(entry.start, entry.start + entry.width)
                for m in self.modules.values():
                    m.lora_A[rows].zero_()
                    m.lora_B[:, rows].zero_()
                    if entry.bias_slot is not None:
                        m.lora_bias[entry.bias_slot].zero_()
        self._write_scales()

    def grow(self, rows: int, slots: int | None = None) -> None:
        """More room (never less): new buffers with the loaded LoRAs kept. A compiled model recompiles once."""
        rows, slots = max(rows, self.rows), max(slots or self.slots, self.slots)
        if (rows, slots) == (self.rows, self.slots):
            return
        with torch.no_grad():
            for m in self.modules.values():
                m.resize(rows, slots)
        self.rows, self.slots = rows, slots

    # ------------------------------------------------------------- weights
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Exactly the LoRAs in ``weights`` are on, with those weights (others 0); ``{}`` turns LoRA off."""
        unknown = [n for n in weights if n not in self.entries]
        if unknown:
            raise ValueError(f"adapter(s) {unknown} are not loaded in this model")
        self.weights = {name: float(weights.get(name, 0.0)) for name in self.entries}
        self._write_scales()

    def _write_scales(self) -> None:
        rows = torch.zeros(self.rows, dtype=torch.float32)
        bias = torch.zeros(self.slots, dtype=torch.float32)
        for name, entry in self.entries.items():
            weight = self.weights.get(name, 0.0)
            rows[entry.start : entry.start + entry.width] = weight
            if entry.bias_slot is not None:
                bias[entry.bias_slot] = weight
        by_device: dict[torch.device, list[SlotLinear]] = {}
        for m in self.modules.values():
            by_device.setdefault(m.lora_scale.device, []).append(m)
        with torch.no_grad():
            for device, group in by_device.items():
                src_rows, src_bias = rows.to(device), bias.to(device)
                torch._foreach_copy_([m.lora_scale for m in group], [src_rows] * len(group))
                torch._foreach_copy_([m.bias_scale for m in group], [src_bias] * len(group))


def _not_hotswappable(key: str) -> NotHotswappable:
    return NotHotswappable(
        f"{key!r} is not a plain LoRA tensor (only lora_A/lora_B weights and lora_B biases hot-swap)"
    )


def bank_of(model: nn.Module) -> LoraBank | None:
    """The bank :func:`install` put on ``model``, or None."""
    return model.__dict__.get(BANK_ATTR)


def install(model: nn.Module, *, rows: int, slots: int, dtype: torch.dtype | None = None) -> LoraBank:
    """Put a :class:`SlotLinear` with ``rows`` LoRA rows and ``slots`` bias slots around every Linear of ``model``.

    ``dtype``: the factors' dtype (default: each layer's weight dtype; pass the compute dtype
    when the weights are stored in fp8). Refuses a model that already holds peft adapters
    (delete them first) or that has a bank.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if bank_of(model) is not None:
        raise ValueError("this model already has LoRA slots")
    if rows < 1 or slots < 1:
        raise ValueError("LoRA slots need at least one row and one bias slot")
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("delete the model's peft adapters before installing LoRA slots")
    modules: dict[str, SlotLinear] = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                slot = SlotLinear(child, rows, slots, dtype)
                setattr(parent, child_name, slot)
                modules[f"{parent_name}.{child_name}" if parent_name else child_name] = slot
    bank = LoraBank(modules, rows, slots)
    model.__dict__[BANK_ATTR] = bank
    return bank


def uninstall(model: nn.Module) -> None:
    """Put the plain Linears back (the LoRAs in the bank are dropped)."""
    bank = model.__dict__.pop(BANK_ATTR, None)
    if bank is None:
        return
    for name, slot in bank.modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if getattr(parent, child) is slot:
            setattr(parent, child, slot.base_layer)
