"""LyCORIS LoKr / LoHa factors as exact plain-LoRA pairs, and full weight diffs as full-rank pairs.

The maths behind :mod:`studio.loras.convert` (see its docstring for the decisions): each
function takes one module's factors by parameter name (``lokr_w1``, ``hada_w1_a`` …) and
returns ``(down, up)`` with ``up @ down`` equal to the module's weight delta.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Factors = Mapping[str, torch.Tensor]  # parameter name -> tensor, for one module


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def full_rank_pair(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A == delta exactly: an identity on the smaller side."""
    out_f, in_f = delta.shape
    if out_f <= in_f:
        return delta, torch.eye(out_f, dtype=delta.dtype)
    return torch.eye(in_f, dtype=delta.dtype), delta


def _as_pq(full: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None):
    """A factor W as (P, Q) with W = P @ Q and the smallest inner size we can get for free."""
    if a is not None and b is not None:
        return _float(a), _float(b)
    if full is None:
        raise ValueError("missing factor")
    w = _float(full)
    rows, cols = w.shape
    return (torch.eye(rows), w) if rows <= cols else (w, torch.eye(cols))


def lokr_pair(m: Factors, alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    w1, w1a, w1b = m.get("lokr_w1"), m.get("lokr_w1_a"), m.get("lokr_w1_b")
    w2, w2a, w2b = m.get("lokr_w2"), m.get("lokr_w2_a"), m.get("lokr_w2_b")
    for t in (w1, w1a, w1b, w2, w2a, w2b):
        if t is not None and t.ndim != 2:
            raise ValueError("LoKr factors of a convolution")
    p1, q1 = _as_pq(w1, w1a, w1b)
    p2, q2 = _as_pq(w2, w2a, w2b)
    dim = None
    if w1 is None and w1b is not None:
        dim = w1b.shape[0]
    if w2 is None and w2b is not None:
        dim = w2b.shape[0]
    scale = alpha / dim if (alpha is not None and dim) else 1.0
    out_f, in_f = p1.shape[0] * p2.shape[0], q1.shape[1] * q2.shape[1]
    rank = p1.shape[1] * p2.shape[1]
    if rank >= min(out_f, in_f):
        delta = torch.kron(p1 @ q1, p2 @ q2) * scale
        return full_rank_pair(delta)
    return torch.kron(q1, q2) * scale, torch.kron(p1, p2)


def loha_pair(m: Factors, alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    w1a, w1b, w2a, w2b = (m.get(p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    if any(t is None for t in (w1a, w1b, w2a, w2b)):
        raise ValueError("incomplete LoHa")
    if any(t.ndim != 2 for t in (w1a, w1b, w2a, w2b)):  # type: ignore[union-attr]
        raise ValueError("LoHa factors of a convolution")
    w1a, w1b, w2a, w2b = (_float(t) for t in (w1a, w1b, w2a, w2b))  # type: ignore[arg-type]
    scale = alpha / w1b.shape[0] if alpha is not None else 1.0
    out_f, in_f = w1a.shape[0], w1b.shape[1]
    r1, r2 = w1b.shape[0], w2b.shape[0]
    if r1 * r2 >= min(out_f, in_f):
        delta = (w1a @ w1b) * (w2a @ w2b) * scale
        return full_rank_pair(delta)
    up = (w1a.unsqueeze(2) * w2a.unsqueeze(1)).reshape(out_f, r1 * r2)
    down = (w1b.unsqueeze(1) * w2b.unsqueeze(0)).reshape(r1 * r2, in_f) * scale
    return down, up


def lycoris_bytes(m: Factors, itemsize: int) -> int:
    """Bytes of the LoRA factors the conversion of ``m`` will make (computed from shapes only)."""
    shapes = {p: tuple(t.shape) for p, t in m.items()}

    def inner(full, a, b):
        if a in shapes and b in shapes:
            return shapes[a][0], shapes[a][1], shapes[b][1]
        if full in shapes and len(shapes[full]) == 2:
            r, c = shapes[full]
            return r, min(r, c), c
        return None

    if "hada_w1_a" in shapes and "hada_w1_b" in shapes and "hada_w2_b" in shapes:
        out_f, in_f = shapes["hada_w1_a"][0], shapes["hada_w1_b"][-1]
        rank = min(shapes["hada_w1_b"][0] * shapes["hada_w2_b"][0], min(out_f, in_f))
    else:
        f1 = inner("lokr_w1", "lokr_w1_a", "lokr_w1_b")
        f2 = inner("lokr_w2", "lokr_w2_a", "lokr_w2_b")
        if not f1 or not f2:
            return 0
        out_f, in_f = f1[0] * f2[0], f1[2] * f2[2]
        rank = min(f1[1] * f2[1], min(out_f, in_f))
    return (out_f + in_f) * rank * itemsize
