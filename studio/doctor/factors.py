r"""A LoRA file's weight change per module, as low-rank factors (or a dense diff), and its exact sizes.

The file is read the way the pipeline manager reads it (:func:`studio.loras.match.read_lora`:
the safe safetensors reader, the converter for every layout the studio loads, the match
against the model), so the doctor sees exactly the modules and factors that would be
loaded: alpha folded in, LoKr/LoHa turned into factors, ``diff_b`` as LoRA biases, and
lightx2v's full ``diff`` tensors as a dense change.

For one module the change is ``ΔW = B A`` (``B``: out × r, ``A``: r × in) plus a bias
change ``Δb``. Everything the doctor needs is an inner product of two such changes, and
none of them builds a full-size ``ΔW``:

* ``‖B A‖² = trace((BᵀB)(AAᵀ))`` and ``⟨B₁A₁, B₂A₂⟩ = trace((B₁ᵀB₂)(A₂A₁ᵀ))``: r × r products,
  ``2·r₁·r₂·(in + out)`` FLOPs. :func:`inner_matrix` takes them for several LoRAs of one
  module at once, from the Gram matrices of the concatenated factors (``[B₁ … Bₙ]ᵀ[B₁ … Bₙ]``
  and the same for the ``A``\s): one wide matrix product per side instead of one thin one per
  pair, which CPU GEMM kernels run many times faster;
* a dense diff ``D`` (the converter's exact full-rank pair ``(D, I)``, recognised and kept
  as ``D``): ``‖D‖²`` directly, and ``⟨D, B A⟩ = ⟨BᵀD, A⟩`` (an r × in product, no out × in
  temporary besides ``D`` itself).

The bias counts as one more column of the weight: ``‖[ΔW | Δb]‖²`` and ``⟨[ΔW₁|Δb₁], [ΔW₂|Δb₂]⟩``.
Products run in float32 (bf16/fp16 factors are converted per module); sums are float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from studio.loras.match import read_lora

_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_B.bias")


@dataclass
class ModuleDelta:
    """One module's change: ``up @ down`` (low rank) or ``dense``, plus ``bias`` (all float32)."""

    in_features: int
    out_features: int
    rank: int  # the rank of the adapter as loaded (a dense diff loads as a full-rank pair)
    up: torch.Tensor | None = None  # B: out × r
    down: torch.Tensor | None = None  # A: r × in
    dense: torch.Tensor | None = None  # D: out × in
    bias: torch.Tensor | None = None  # out


@dataclass
class LoraFactors:
    """The per-module changes of one LoRA file on one model."""

    path: Path
    modules: dict[str, ModuleDelta]
    notes: list[str] = field(default_factory=list)


def _identity(t: torch.Tensor) -> bool:
    """Whether a square matrix is exactly the identity (no n × n temporary)."""
    n = t.shape[0]
    if t.ndim != 2 or t.shape[1] != n:
        return False
    return bool(torch.all(t.diagonal() == 1)) and int(torch.count_nonzero(t)) == n


def module_delta(params: Mapping[str, torch.Tensor]) -> ModuleDelta:
    """The change one converted module (``lora_A.weight``, ``lora_B.weight``, ``lora_B.bias``) makes."""
    down = params["lora_A.weight"].to(torch.float32)
    up = params["lora_B.weight"].to(torch.float32)
    bias = params.get("lora_B.bias")
    bias = bias.to(torch.float32) if bias is not None else None
    rank, in_f = down.shape
    out_f = up.shape[0]
    delta = ModuleDelta(in_features=in_f, out_features=out_f, rank=rank, bias=bias)
    if rank == out_f and _identity(up):  # the converter's (D, I) pair of a dense diff
        delta.dense = down
    elif rank == in_f and _identity(down):
        delta.dense = up
    else:
        delta.up, delta.down = up, down
    return delta


def _modules(state_dict: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if not key.startswith("transformer."):
            continue
        rest = key[len("transformer.") :]
        for param in _PARAMS:
            if rest.endswith("." + param):
                grouped.setdefault(rest[: -len(param) - 1], {})[param] = tensor
                break
    for name, params in grouped.items():
        if "lora_A.weight" in params and "lora_B.weight" in params:
            yield name, params


def _factors(path: Path, prepared) -> LoraFactors:
    modules = {name: module_delta(params) for name, params in _modules(prepared.state_dict)}
    notes = list(prepared.notes)
    if any(k.endswith(".lora_magnitude_vector") for k in prepared.state_dict):
        notes.append("Its DoRA magnitudes are not counted: the doctor measures the low-rank change only.")
    return LoraFactors(path=path, modules=modules, notes=notes)


def read_factors(path: str | Path, transformer: nn.Module) -> dict[str | None, LoraFactors]:
    """Read, convert and match a LoRA file for ``transformer``; raises ``LoraFileError`` as loading would.

    Returns ``{None: factors}``, or for a two-expert (ai-toolkit) file one entry per half
    (``"high"``, ``"low"``), each prepared the way the manager prepares it for that expert.
    Only the structure of ``transformer`` is read (which layers exist, their shapes), never
    its weights, so this needs no lock on the model.
    """
    lora = read_lora(path, hash_file=False)
    halves: list[str | None] = list(lora.info.experts_in_file) if lora.two_experts else [None]
    return {half: _factors(Path(path), lora.prepare(transformer, half)) for half in halves}


# --------------------------------------------------------------------------- inner products
def _sum64(t: torch.Tensor) -> float:
    return float(t.sum(dtype=torch.float64))


def squared_change(m: ModuleDelta) -> float:
    """``‖ΔW‖²`` of one module (the bias not included)."""
    if m.dense is not None:
        flat = m.dense.reshape(-1)
        return float(torch.dot(flat, flat))
    assert m.up is not None and m.down is not None
    return _sum64((m.up.T @ m.up) * (m.down @ m.down.T))


def squared_bias(m: ModuleDelta) -> float:
    return float(torch.dot(m.bias, m.bias)) if m.bias is not None else 0.0


def _lowrank_dense(up: torch.Tensor, down: torch.Tensor, dense: torch.Tensor) -> float:
    return _sum64((up.T @ dense) * down)  # ⟨D, B A⟩ = Σ (BᵀD) ⊙ A


def inner_change(a: ModuleDelta, b: ModuleDelta) -> float:
    """``⟨ΔW_a, ΔW_b⟩ + ⟨Δb_a, Δb_b⟩`` of one module changed by two LoRAs."""
    if (a.in_features, a.out_features) != (b.in_features, b.out_features):
        raise ValueError("the two changes are for layers of different shapes")
    if a.dense is not None and b.dense is not None:
        weight = float(torch.dot(a.dense.reshape(-1), b.dense.reshape(-1)))
    elif a.dense is not None:
        weight = _lowrank_dense(b.up, b.down, a.dense)  # type: ignore[arg-type]
    elif b.dense is not None:
        weight = _lowrank_dense(a.up, a.down, b.dense)  # type: ignore[arg-type]
    else:
        assert a.up is not None and a.down is not None and b.up is not None and b.down is not None
        weight = _sum64((a.up.T @ b.up) * (a.down @ b.down.T))  # trace((B₁ᵀB₂)(A₂A₁ᵀ))
    bias = float(torch.dot(a.bias, b.bias)) if a.bias is not None and b.bias is not None else 0.0
    return weight + bias


def inner_matrix(
    deltas: Sequence[ModuleDelta], device: str | torch.device | None = None
) -> list[list[float]]:
    """``⟨Δ_i, Δ_j⟩`` (weights and biases) of one module changed by several LoRAs, for every i, j.

    The low-rank changes go through two Gram matrices of their concatenated factors (on
    ``device`` when given, e.g. the GPU); a dense diff meets the others through
    :func:`inner_change`. Equal to ``inner_change(deltas[i], deltas[j])`` up to float rounding.
    """
    n = len(deltas)
    out = [[0.0] * n for _ in range(n)]
    low = [i for i, d in enumerate(deltas) if d.dense is None]
    if low:
        ups = torch.cat([deltas[i].up for i in low], 1)  # type: ignore[misc]
        downs = torch.cat([deltas[i].down for i in low], 0)  # type: ignore[misc]
        if device is not None:
            ups, downs = ups.to(device), downs.to(device)
        both = ((ups.T @ ups) * (downs @ downs.T)).to(torch.float64)  # Σ over blocks = ⟨B_iA_i, B_jA_j⟩
        edges = [0]
        for i in low:
            edges.append(edges[-1] + deltas[i].rank)
        rows = torch.stack([both[edges[k] : edges[k + 1]].sum(0) for k in range(len(low))])
        blocks = torch.stack([rows[:, edges[k] : edges[k + 1]].sum(1) for k in range(len(low))], 1).cpu()
        for a, i in enumerate(low):
            for b, j in enumerate(low):
                out[i][j] = float(blocks[a, b])
    for i, di in enumerate(deltas):
        for j in range(i, n):
            dj = deltas[j]
            if di.dense is not None or dj.dense is not None:
                out[i][j] = out[j][i] = inner_change(di, dj)
            elif di.bias is not None and dj.bias is not None:
                bias = float(torch.dot(di.bias, dj.bias))
                out[i][j] += bias
                if j != i:
                    out[j][i] += bias
    return out
