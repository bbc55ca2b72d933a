"""The doctor's inner products from factors equal the dense computation."""

from __future__ import annotations

import pytest
import torch

from studio.doctor.factors import (
    ModuleDelta,
    inner_change,
    inner_matrix,
    module_delta,
    squared_bias,
    squared_change,
)
from studio.loras.lycoris import full_rank_pair

OUT, IN = 48, 40


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _lowrank(
    seed: int, rank: int, bias: bool = False
) -> tuple[ModuleDelta, torch.Tensor, torch.Tensor | None]:
    g = _gen(seed)
    up, down = torch.randn(OUT, rank, generator=g), torch.randn(rank, IN, generator=g)
    b = torch.randn(OUT, generator=g) if bias else None
    params = {"lora_A.weight": down, "lora_B.weight": up}
    if b is not None:
        params["lora_B.bias"] = b
    return module_delta(params), (up.double() @ down.double()), b


def _dense(seed: int, orientation: str = "wide") -> tuple[ModuleDelta, torch.Tensor]:
    d = torch.randn(OUT, IN, generator=_gen(seed))
    if orientation == "tall":
        d = torch.randn(IN, OUT, generator=_gen(seed))
    down, up = full_rank_pair(d)  # what the converter makes of a lightx2v .diff
    delta = module_delta({"lora_A.weight": down, "lora_B.weight": up})
    return delta, d.double()


def _close(a: float, b: float) -> None:
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_a_dense_diff_is_recognised_and_kept_dense(orientation):
    delta, d = _dense(3, orientation)
    assert delta.dense is not None and delta.up is None and delta.down is None
    torch.testing.assert_close(delta.dense.double(), d)
    assert delta.rank == min(d.shape)  # loaded as a full-rank pair: the FLOP count uses that rank
    _close(squared_change(delta), float((d * d).sum()))


def test_a_low_rank_pair_that_only_looks_square_stays_low_rank():
    square = module_delta({"lora_A.weight": torch.randn(IN, IN), "lora_B.weight": torch.randn(OUT, IN)})
    assert square.dense is None and square.up is not None


@pytest.mark.parametrize("bias", [False, True])
def test_squared_change_and_inner_products_equal_the_dense_ones(bias):
    a, da, ba = _lowrank(1, 4, bias)
    b, db, bb = _lowrank(2, 7, bias)
    _close(squared_change(a), float((da * da).sum()))
    _close(squared_bias(a), float((ba.double() ** 2).sum()) if bias else 0.0)
    expected = float((da * db).sum()) + (float(ba.double() @ bb.double()) if bias else 0.0)
    _close(inner_change(a, b), expected)
    _close(inner_change(b, a), expected)
    _close(inner_change(a, a), squared_change(a) + squared_bias(a))


def test_inner_products_with_a_dense_diff_equal_the_dense_ones():
    low, dl, _ = _lowrank(4, 5)
    dense, dd = _dense(5)
    other, do = _dense(6)
    _close(inner_change(low, dense), float((dl * dd).sum()))
    _close(inner_change(dense, low), float((dl * dd).sum()))
    _close(inner_change(dense, other), float((dd * do).sum()))


def test_an_exact_negative_has_cosine_minus_one():
    a, _, _ = _lowrank(7, 6, bias=True)
    neg = ModuleDelta(IN, OUT, 6, up=-a.up, down=a.down, bias=-a.bias)
    cosine = inner_change(a, neg) / (squared_change(a) + squared_bias(a))
    assert cosine == pytest.approx(-1.0, abs=1e-6)


def test_changes_of_different_layers_are_refused():
    a, _, _ = _lowrank(1, 2)
    wrong = module_delta({"lora_A.weight": torch.randn(2, IN + 1), "lora_B.weight": torch.randn(OUT, 2)})
    with pytest.raises(ValueError, match="different shapes"):
        inner_change(a, wrong)


def test_the_inner_matrix_of_several_loras_equals_the_pairwise_products():
    low_a, _, _ = _lowrank(1, 4, bias=True)
    low_b, _, _ = _lowrank(2, 7)
    dense, _ = _dense(3)
    low_c, _, _ = _lowrank(4, 3, bias=True)
    deltas = [low_a, dense, low_b, low_c]
    matrix = inner_matrix(deltas)
    for i, a in enumerate(deltas):
        for j, b in enumerate(deltas):
            _close(matrix[i][j], inner_change(a, b))
    _close(matrix[0][0], squared_change(low_a) + squared_bias(low_a))
