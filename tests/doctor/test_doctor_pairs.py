"""Pairs on the demo model: conflict, redundancy, disjoint modules, and the cosine against the dense one."""

from __future__ import annotations

import math

import pytest
import torch
from doctor_helpers import TINY, lora_tensors, scaled_up, single, stack_of
from peft.tuners.lora.layer import LoraLayer

from studio.doctor.pairs import CONFLICT, REDUNDANT
from studio.stack.schema import Stack


def _pairs(report, expert="high"):
    return {(p.a_name, p.b_name): p for p in report.pairs if p.expert == expert}


def test_an_exact_negative_conflicts_with_cosine_minus_one(studio, write):
    base = lora_tensors(seed=1, layout="original", alpha=2.0)
    a = write("style.safetensors", base)
    b = write("anti_style.safetensors", scaled_up(base, -1.0))
    report = studio.doctor(TINY, stack_of(single(a), single(b)))
    assert {p.expert for p in report.pairs} == {"high", "low"}
    for pair in report.pairs:
        assert pair.cosine == pytest.approx(-1.0, abs=1e-6)
        assert pair.flags == ["conflict"] and pair.scale_both is None
        assert pair.shared_modules == 20  # 10 Linears per block, 2 blocks
    assert "conflict" in report.summary()
    badges = report.flags_by_entry()
    assert len(badges) == 2 and all(flags == ["conflict"] for flags in badges.values())


def test_loras_on_disjoint_modules_share_nothing_and_get_no_flag(studio, write):
    a = write("attention.safetensors", lora_tensors(seed=1, modules=["attn1.to_q", "attn1.to_k"]))
    b = write("ffn.safetensors", lora_tensors(seed=2, modules=["ffn.net.0.proj", "ffn.net.2"]))
    report = studio.doctor(TINY, stack_of(single(a), single(b)))
    assert report.pairs and all(
        p.shared_modules == 0 and p.cosine is None and p.flags == [] for p in report.pairs
    )
    assert report.flags_by_entry() == {}


def test_a_copy_is_redundant_and_lowering_both_is_suggested(studio, write):
    base = lora_tensors(seed=1)
    a = write("style.safetensors", base)
    b = write("style_x3.safetensors", scaled_up(base, 3.0))
    report = studio.doctor(TINY, stack_of(single(a), single(b)))
    pair = _pairs(report)[("style", "style_x3")]
    assert pair.cosine == pytest.approx(1.0, abs=1e-6) and pair.flags == ["redundant"]
    # together they change the model as much as 1 + 3 = 4 copies; the stronger alone is 3: k = 3/4
    assert pair.scale_both == pytest.approx(0.75, rel=1e-3)


def test_the_same_file_twice_is_redundant_and_with_opposite_weights_a_conflict(studio, write):
    path = write("style.safetensors", lora_tensors(seed=1))
    same = studio.doctor(TINY, stack_of(single(path, name="one"), single(path, name="two")))
    assert all(p.flags == ["redundant"] and p.cosine == pytest.approx(1.0) for p in same.pairs)
    opposite = studio.doctor(
        TINY, stack_of(single(path, 1.0, name="one"), single(path, -0.5, 0.0, name="two"))
    )
    (pair,) = opposite.pairs  # the second entry is off on the low expert
    assert pair.expert == "high" and pair.flags == ["conflict"] and pair.cosine == pytest.approx(-1.0)


def _deltas(manager, stack: Stack) -> dict[str, torch.Tensor]:
    """Module → the fused change [ΔW | Δb] of the high-noise expert under ``stack``."""
    model = manager.pipe.transformer

    def weights():
        out = {}
        for name, m in model.named_modules():
            if isinstance(m, LoraLayer):
                base = m.get_base_layer()
                bias = base.bias if base.bias is not None else torch.zeros(base.out_features)
                out[name] = torch.cat([base.weight.detach(), bias.detach()[:, None]], 1).double().clone()
        return out

    manager.apply_stack(stack)
    before = weights()
    manager.apply_stack(stack, fuse=True)
    after = weights()
    manager.apply_stack(Stack())
    return {name: after[name] - before[name] for name in before}


def test_the_cosine_equals_the_dense_one_for_a_dense_diff_against_a_low_rank_lora(studio, manager, write):
    # lightx2v: lora_down/up + diff_b + a dense head.head.diff; the other: original layout with alpha
    a = write("speed.safetensors", lora_tensors(seed=5, layout="lightx2v", scale=0.2))
    b = write("style.safetensors", lora_tensors(seed=6, layout="original", alpha=2.0, top_level=["proj_out"]))
    report = studio.doctor(TINY, stack_of(single(a, 0.8), single(b, 1.5)))
    pair = _pairs(report)[("speed", "style")]
    da = _deltas(manager, stack_of(single(a, 0.8)))
    db = _deltas(manager, stack_of(single(b, 1.5)))
    shared = sorted(set(da) & set(db))
    assert pair.shared_modules == len(shared) == 21  # 20 block Linears + proj_out (dense in one of them)
    dot = sum(float((da[n] * db[n]).sum()) for n in shared)
    na = sum(float((da[n] ** 2).sum()) for n in shared)
    nb = sum(float((db[n] ** 2).sum()) for n in shared)
    assert pair.cosine == pytest.approx(dot / math.sqrt(na * nb), rel=1e-4, abs=1e-6)
    assert CONFLICT < pair.cosine < REDUNDANT and pair.flags == []  # two random LoRAs: nearly orthogonal
