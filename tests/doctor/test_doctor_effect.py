"""Effect strength on the demo model: exact against the dense change, and the flags of a library."""

from __future__ import annotations

import math

import pytest
import torch
from doctor_helpers import TINY, lora_tensors, scaled_up, single, stack_of
from peft.tuners.lora.layer import LoraLayer

from studio.doctor.effect import FAR, NO_EFFECT
from studio.stack.schema import Stack

LAYOUTS = [
    pytest.param("peft", {}, torch.float32, id="peft"),
    pytest.param("original", {"alpha": 2.0}, torch.float32, id="original-alpha"),
    pytest.param("original", {"alpha": 2.0}, torch.bfloat16, id="original-bf16"),
    pytest.param("lightx2v", {"diff_b": "some"}, torch.float32, id="lightx2v-diff"),
    pytest.param("musubi", {}, torch.float32, id="musubi"),
    pytest.param("lokr", {}, torch.float32, id="lokr"),
    pytest.param("loha", {}, torch.bfloat16, id="loha-bf16"),
]


def _linears(model) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    out = {}
    for name, module in model.named_modules():
        base = module.get_base_layer() if isinstance(module, LoraLayer) else module
        if type(base) is torch.nn.Linear and not name.endswith(".base_layer") and "lora_" not in name:
            bias = base.bias.detach().clone() if base.bias is not None else None
            out[name] = (base.weight.detach().clone(), bias)
    return out


def dense_relative_effects(manager, stack: Stack) -> dict[str, tuple[float, int]]:
    """Expert → (‖[ΔW|Δb]‖/‖[W|b]‖ over the modules the stack's adapters sit on, module count), from fusing."""
    out = {}
    before = {c: _linears(getattr(manager.pipe, c)) for c in manager.components().values()}
    manager.apply_stack(stack, fuse=True)
    try:
        for expert, component in manager.components().items():
            model = getattr(manager.pipe, component)
            touched = [name for name, m in model.named_modules() if isinstance(m, LoraLayer) and m.merged]
            after = _linears(model)
            change = base = 0.0
            for name in touched:
                (w0, b0), (w1, b1) = before[component][name], after[name]
                change += float(((w1 - w0).double() ** 2).sum())
                base += float((w0.double() ** 2).sum())
                if b0 is not None:
                    change += float(((b1 - b0).double() ** 2).sum())
                    base += float((b0.double() ** 2).sum())
            out[expert] = (math.sqrt(change / base), len(touched))
    finally:
        manager.apply_stack(Stack())
    return out


@pytest.mark.parametrize(("layout", "options", "dtype"), LAYOUTS)
def test_relative_effect_equals_the_dense_change_of_the_fused_model(
    studio, manager, write, layout, options, dtype
):
    path = write(f"{layout}.safetensors", lora_tensors(seed=3, layout=layout, dtype=dtype, **options))
    stack = stack_of(single(path, 0.7, 1.3))
    report = studio.doctor(TINY, stack)
    dense = dense_relative_effects(manager, stack)
    found = {f.expert: f for f in report.loras}
    assert set(found) == {"high", "low"}
    for expert, (effect, modules) in dense.items():
        finding = found[expert]
        assert finding.modules == modules > 0
        assert finding.relative_effect == pytest.approx(effect, rel=1e-4)
        assert finding.relative_effect_at_1 == pytest.approx(effect / finding.weight, rel=1e-4)


def test_flags_a_strong_copy_and_a_no_effect_lora_against_the_library(studio, write):
    base = lora_tensors(seed=1)
    r = write("random.safetensors", base)
    neg = write("negative.safetensors", scaled_up(base, -1.0))
    x8 = write("times8.safetensors", scaled_up(base, 8.0))
    write("other.safetensors", lora_tensors(seed=2))  # in the library, not in the stack
    zero = write("zero_b.safetensors", scaled_up(base, 0.0))
    report = studio.doctor(TINY, stack_of(single(r), single(neg), single(x8), single(zero)))
    found = {(f.name, f.expert): f for f in report.loras}
    assert len(found) == 8  # four LoRAs on both experts

    for expert in ("high", "low"):
        strong = found[("times8", expert)]
        assert strong.flags == ["strong"]
        # the other LoRAs of the library: random, negative (same size) and other: the median is |random|
        assert strong.factor == pytest.approx(8.0, rel=1e-6)
        assert strong.suggested_weight == pytest.approx(0.125, rel=1e-3)
        assert strong.relative_effect == pytest.approx(
            8 * found[("random", expert)].relative_effect, rel=1e-6
        )

        nothing = found[("zero_b", expert)]
        assert nothing.flags == ["no-effect"] and nothing.relative_effect == 0.0
        assert nothing.suggested_weight is None

        for name in ("random", "negative"):
            plain = found[(name, expert)]
            assert plain.flags == []
            assert 1 / FAR < plain.factor < FAR
            assert plain.relative_effect == pytest.approx(found[("random", expert)].relative_effect, rel=1e-6)
    reference = {r.expert: r for r in report.library}
    assert reference["high"].count == 4  # random, negative, times8, other (zero_b changes nothing)


def test_the_suggested_weight_is_a_hint_and_following_it_clears_the_flag(studio, write):
    base = lora_tensors(seed=1)
    for i, factor in enumerate((1.0, -1.0, 1.0)):
        write(f"ref{i}.safetensors", scaled_up(lora_tensors(seed=10 + i) if i == 2 else base, factor))
    x8 = write("times8.safetensors", scaled_up(base, 8.0))
    entry = single(x8)
    first = studio.doctor(TINY, stack_of(entry))
    high = next(f for f in first.loras if f.expert == "high")
    assert "strong" in high.flags and entry.weight_high == 1.0  # nothing was changed
    followed = single(x8, high.suggested_weight, high.suggested_weight)
    again = next(f for f in studio.doctor(TINY, stack_of(followed)).loras if f.expert == "high")
    assert again.flags == [] and again.factor == pytest.approx(1.0, rel=2e-3)


def test_weight_scales_the_effect_and_tiny_weights_have_no_effect(studio, write):
    for i in range(3):
        write(f"ref{i}.safetensors", lora_tensors(seed=20 + i))
    path = write("style.safetensors", lora_tensors(seed=1))
    weak_w = 0.1
    report = studio.doctor(TINY, stack_of(single(path, weak_w, 2.0)))
    high, low = (next(f for f in report.loras if f.expert == e) for e in ("high", "low"))
    assert high.relative_effect == pytest.approx(weak_w * high.relative_effect_at_1, rel=1e-9)
    assert low.relative_effect == pytest.approx(2.0 * low.relative_effect_at_1, rel=1e-9)
    assert "weak" in high.flags and high.factor <= 1 / FAR
    assert high.suggested_weight == pytest.approx(weak_w / high.factor, rel=1e-2)
    tiny = 0.5 * NO_EFFECT / high.relative_effect_at_1
    tiny_report = studio.doctor(TINY, stack_of(single(path, tiny, 0.0)))
    (only,) = tiny_report.loras  # weight 0 on the low expert: not active there
    assert only.flags == ["no-effect"] and only.suggested_weight is not None


def test_without_enough_library_loras_there_is_no_median_and_no_strong_flag(studio, write):
    base = lora_tensors(seed=1)
    r = write("random.safetensors", base)
    x8 = write("times8.safetensors", scaled_up(base, 8.0))
    report = studio.doctor(TINY, stack_of(single(r), single(x8)))
    assert all(f.factor is None and f.suggested_weight is None for f in report.loras)
    assert all("strong" not in f.flags and "weak" not in f.flags for f in report.loras)
    assert all(ref.median is None and ref.count == 2 for ref in report.library)


def test_a_lora_that_fits_nothing_is_reported_not_raised(studio, write, library):
    from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors

    good = write("good.safetensors", lora_tensors(seed=1))
    wrong = write(
        "for_14b.safetensors", make_lora_tensors(WAN_14B_CONFIG, rank=2, blocks=[0], modules=["attn1.to_q"])
    )
    report = studio.doctor(TINY, stack_of(single(good), single(wrong)))
    bad = [f for f in report.loras if f.name == "for_14b"]
    assert bad and all(
        f.error and "would change nothing" in f.error and f.relative_effect is None for f in bad
    )
    assert all(f.error is None for f in report.loras if f.name == "good")
    assert "cannot be measured" in report.summary()
    assert report.flags_by_entry()[report.loras[-1].entry] == ["error"]


def test_a_two_expert_file_is_measured_per_half_as_the_manager_loads_it(studio, manager, write):
    # ai-toolkit: both experts in one file; each expert gets its own half
    path = write("both.safetensors", lora_tensors(seed=4, layout="ai_toolkit", scale=0.2))
    other = write("style.safetensors", lora_tensors(seed=5))
    stack = stack_of(single(path, 0.6, 1.4), single(other))
    report = studio.doctor(TINY, stack)
    dense = dense_relative_effects(manager, stack_of(single(path, 0.6, 1.4)))
    found = {f.expert: f for f in report.loras if f.name == "both"}
    for expert, (effect, modules) in dense.items():
        assert found[expert].modules == modules > 0
        assert found[expert].relative_effect == pytest.approx(effect, rel=1e-4)
    assert found["high"].relative_effect_at_1 != pytest.approx(found["low"].relative_effect_at_1)
    assert {p.expert for p in report.pairs} == {"high", "low"} and all(
        p.cosine is not None for p in report.pairs
    )
    reads = studio.doctor_engine.files_read
    assert (
        studio.doctor(TINY, stack).to_json() == report.to_json() and studio.doctor_engine.files_read == reads
    )
