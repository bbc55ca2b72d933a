"""studio.engine.lora_slots (fixed-size LoRA room) against studio.engine.lora_ops (peft layers), eagerly."""

from __future__ import annotations

import lorakit
import pytest
import torch

from studio.engine import lora_ops, lora_slots
from studio.engine.compile import room_flops_fraction
from studio.loras.match import prepare_lora
from studio.loras.synthetic import make_lora_tensors, write_lora
from studio.models.shapes import A14B_TRANSFORMER


@pytest.fixture(scope="module")
def loras(demo_model_dir, demo_transformer_config, tmp_path_factory):
    """PEFT-layout state dicts from the studio's reader/converter (biases, partial modules, top level)."""
    folder = tmp_path_factory.mktemp("slot-loras")
    base = lorakit.transformer(demo_model_dir)
    specs = {
        "style": dict(rank=4, layout="original", seed=1),
        "detail": dict(rank=8, layout="original", seed=2, modules=["attn1.to_q", "ffn.net.2", "attn2.to_v"]),
        "speed": dict(rank=4, layout="lightx2v", seed=4),  # lora_down/up + diff_b + head diff
        "embed": dict(rank=2, layout="peft", seed=5, top_level=["condition_embedder.time_proj"]),
    }
    out = {}
    for name, spec in specs.items():
        tensors = make_lora_tensors(demo_transformer_config, scale=0.3, **spec)
        path = write_lora(folder / f"{name}.safetensors", tensors)
        out[name] = prepare_lora(path, base, hash_file=False).state_dict
    return out


def _out(model, model_inputs):
    return lorakit.out(model, model_inputs).float()


def _pair(folder, dtype, loras, names, rows=64):
    """The same LoRAs in peft layers (lora_ops) and in a bank."""
    peft_model, slot_model = lorakit.transformer(folder, dtype), lorakit.transformer(folder, dtype)
    bank = lora_slots.install(slot_model, rows=rows, slots=4)
    for name in names:
        lora_ops.load_adapter(peft_model, loras[name], name)
        bank.load(loras[name], name)
    return peft_model, slot_model, bank


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bank_matches_peft_layers_for_any_weights(demo_model_dir, loras, dtype):
    names = ["style", "detail", "speed", "embed"]
    peft_model, slot_model, bank = _pair(demo_model_dir, dtype, loras, names)
    exact, _, _ = _pair(demo_model_dir, torch.float32, loras, names)  # the float32 truth for bf16
    inputs = lorakit.inputs(peft_model.config, dtype=dtype)
    base = _out(lorakit.transformer(demo_model_dir, dtype), inputs)
    for weights in (
        {"style": 1.0, "detail": 0.5, "speed": -0.7, "embed": 1.3},
        {"speed": 2.0},
        {"style": 0.3, "embed": 0.0},
    ):
        lora_ops.set_adapter_weights(peft_model, weights)
        lora_ops.set_adapter_weights(slot_model, weights)  # dispatches to the bank
        expected, got = _out(peft_model, inputs), _out(slot_model, inputs)
        assert not torch.allclose(expected, base, atol=1e-2)
        if dtype == torch.float32:
            assert torch.allclose(got, expected, atol=1e-5), (weights, (got - expected).abs().max())
        else:  # bf16 rounds differently on each path: no further from float32 than peft's own result
            lora_ops.set_adapter_weights(exact, weights)
            truth = _out(exact, lorakit.inputs(exact.config))
            assert (got - truth).abs().mean() <= 1.5 * (expected - truth).abs().mean(), weights
    assert bank.weights == {"style": 0.3, "detail": 0.0, "speed": 0.0, "embed": 0.0}
    lora_ops.set_adapter_weights(slot_model, {})
    assert torch.equal(_out(slot_model, inputs), base)  # free or zero-weight rows add exactly nothing


def test_delete_and_reload_reuse_rows_and_pack_when_fragmented(demo_model_dir, loras):
    peft_model, slot_model, bank = _pair(
        demo_model_dir, torch.float32, loras, ["style", "detail", "speed"], 40
    )
    # speed's head diff is a full-rank pair on proj_out (24→64): the widest module makes it 24 rows
    assert bank.used_rows() == 36 and [bank.entries[n].start for n in ("style", "detail", "speed")] == [
        0,
        4,
        12,
    ]
    bank.delete("detail")
    lora_ops.delete_adapters(peft_model, ["detail"])
    assert bank.used_rows() == 28 and all(not m.lora_A[4:12].any() for m in bank.modules.values())
    # 12 rows free in two gaps (8 and 4): a rank-8 LoRA fits the first gap.
    bank.load(loras["detail"], "detail2")
    assert bank.entries["detail2"].start == 4
    bank.delete("style")
    # now 4 + 4 rows free (0-3 and 36-39): a rank-8 LoRA needs the LoRAs packed first.
    bank.load(loras["detail"], "detail3")
    assert [bank.entries[n].start for n in ("detail2", "speed", "detail3")] == [0, 8, 32]
    lora_ops.load_adapter(peft_model, loras["detail"], "detail2")
    lora_ops.load_adapter(peft_model, loras["detail"], "detail3")
    lora_ops.delete_adapters(peft_model, ["style"])
    weights = {"detail2": 0.8, "speed": 1.1, "detail3": -0.4}
    lora_ops.set_adapter_weights(peft_model, weights)
    bank.set_weights(weights)
    inputs = lorakit.inputs(peft_model.config)
    assert torch.allclose(_out(slot_model, inputs), _out(peft_model, inputs), atol=1e-5)
    for name in ("detail2", "speed"):
        got = bank.factors(name)
        for key, tensor in got.items():
            assert torch.equal(tensor, loras["detail" if name == "detail2" else name][f"transformer.{key}"])


def test_a_full_bank_says_how_much_room_it_needs_and_grows_keeping_its_loras(demo_model_dir, loras):
    peft_model, slot_model, bank = _pair(demo_model_dir, torch.float32, loras, ["style"], rows=8)
    before = {name: buf.clone() for name, buf in bank.modules["blocks.0.attn1.to_q"].named_buffers()}
    with pytest.raises(lora_slots.SlotsFull) as full:
        bank.load(loras["detail"], "detail")
    assert (full.value.rows, full.value.slots) == (12, 4) and "8 rows" in str(full.value)
    assert bank.names == ["style"]
    assert all(torch.equal(buf, before[n]) for n, buf in bank.modules["blocks.0.attn1.to_q"].named_buffers())
    bank.grow(64, 8)
    assert bank.modules["blocks.0.attn1.to_q"].lora_A.shape == (64, 24) and bank.slots == 8
    bank.load(loras["detail"], "detail")
    lora_ops.load_adapter(peft_model, loras["detail"], "detail")
    weights = {"style": 1.0, "detail": 0.6}
    lora_ops.set_adapter_weights(peft_model, weights)
    bank.set_weights(weights)
    inputs = lorakit.inputs(peft_model.config)
    assert torch.allclose(_out(slot_model, inputs), _out(peft_model, inputs), atol=1e-5)


def test_bias_slots_run_out_before_rows(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    bank = lora_slots.install(model, rows=64, slots=1)
    bank.load(loras["speed"], "a")
    with pytest.raises(lora_slots.SlotsFull, match="bias slot") as full:
        bank.load(loras["speed"], "b")
    assert full.value.slots == 2
    bank.load(loras["style"], "c")  # no bias: no slot needed


def test_what_the_bank_refuses_leaves_it_unchanged(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    bank = lora_slots.install(model, rows=16, slots=2)
    bank.load(loras["style"], "style")
    dora = {**loras["style"], "transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(24)}
    with pytest.raises(lora_slots.NotHotswappable, match="lora_magnitude_vector"):
        bank.load(dora, "dora")
    with pytest.raises(ValueError, match="already in use"):
        bank.load(loras["style"], "style")
    wrong = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 7),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4),
    }
    with pytest.raises(ValueError, match="shaped for a 7→24 layer"):
        bank.load(wrong, "wrong")
    with pytest.raises(ValueError, match=r"no Linear layer named blocks\.9"):
        bank.load({k.replace("blocks.0.", "blocks.9."): v for k, v in wrong.items()}, "missing")
    with pytest.raises(ValueError, match="not loaded"):
        bank.set_weights({"nope": 1.0})
    assert bank.names == ["style"] and bank.used_rows() == 4


def test_install_and_uninstall_round_trip(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    inputs = lorakit.inputs(model.config)
    base = _out(model, inputs)
    with pytest.raises(ValueError, match="peft adapters"):
        other = lorakit.transformer(demo_model_dir)
        lora_ops.load_adapter(other, loras["style"], "style")
        lora_slots.install(other, rows=4, slots=1)
    bank = lora_slots.install(model, rows=8, slots=2)
    linears = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    assert (
        len(bank.modules) == linears and "proj_out" in bank.modules and "blocks.1.ffn.net.2" in bank.modules
    )
    assert bank.nbytes() == sum(
        (8 * (m.in_features + m.out_features) + 2 * m.out_features) * 4 + (8 + 2) * 4
        for m in bank.modules.values()
    )
    with pytest.raises(ValueError, match="already has"):
        lora_slots.install(model, rows=8, slots=2)
    bank.load(loras["style"], "style")
    bank.set_weights({"style": 1.0})
    assert not torch.equal(_out(model, inputs), base)
    lora_slots.uninstall(model)
    assert lora_slots.bank_of(model) is None and not any(
        isinstance(m, lora_slots.SlotLinear) for m in model.modules()
    )
    assert torch.equal(_out(model, inputs), base)


def test_room_costs_what_the_arithmetic_says():
    # 128 rows in every block Linear of A14B at 480p (32,760 tokens): about 2% of a forward.
    fraction = room_flops_fraction(A14B_TRANSFORMER, 128, 32760)
    assert 0.015 < fraction < 0.025
    assert room_flops_fraction(A14B_TRANSFORMER, 256, 32760) == pytest.approx(2 * fraction)
