"""studio.engine.lora_ops (weights, loading, deleting) against the diffusers/peft calls it replaces.

On the demo transformer, in float32 and in bf16 (the ``dtype`` fixture).
"""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from lorakit import (
    assert_bit_identical,
    base_weights,
    close,
    diffusers_load,
    inputs,
    layer_state,
    out,
    transformer,
)

from studio.engine import lora_ops


@pytest.fixture()
def pair(demo_model_dir, dtype):
    """Two identical demo transformers: one driven by diffusers, one by lora_ops."""
    return transformer(demo_model_dir, dtype), transformer(demo_model_dir, dtype)


def test_set_adapter_weights_matches_set_adapters(pair, loras, dtype):
    ref, ours = pair
    for name in ("style", "detail", "motion"):
        diffusers_load(ref, loras[name], name)
        diffusers_load(ours, loras[name], name)
    x = inputs(ref.config, dtype=dtype)
    for weights in (
        {"style": 0.7, "motion": -1.3},
        {"detail": 2.0},
        {"style": 1.0, "detail": 0.0, "motion": 0.5},
    ):
        ref.enable_lora()
        ref.set_adapters(list(weights), list(weights.values()))
        lora_ops.set_adapter_weights(ours, weights)
        assert layer_state(ours) == layer_state(ref)
        close(out(ours, x), out(ref, x), dtype)
    ref.disable_lora()
    lora_ops.set_adapter_weights(ours, {})
    assert layer_state(ours) == layer_state(ref)
    assert torch.equal(out(ours, x), out(ref, x))  # both run the base model alone
    with pytest.raises(ValueError, match="not loaded"):
        lora_ops.set_adapter_weights(ours, {"nope": 1.0})


def test_load_adapter_matches_load_lora_adapter(pair, loras, dtype):
    ref, ours = pair
    x = inputs(ref.config, seed=2, dtype=dtype)
    for name in ("style", "detail", "speed"):
        diffusers_load(ref, loras[name], name)
        assert lora_ops.load_adapter(ours, loras[name], name) > 0
        # diffusers leaves only the newest adapter active, at weight 1
        assert layer_state(ours) == layer_state(ref)
        close(out(ours, x), out(ref, x), dtype)
    for name in ("style", "detail", "speed"):
        mine, theirs = ours.peft_config[name], ref.peft_config[name]
        assert (mine.r, mine.lora_alpha, mine.rank_pattern, mine.alpha_pattern, mine.lora_bias) == (
            theirs.r,
            theirs.lora_alpha,
            theirs.rank_pattern,
            theirs.alpha_pattern,
            theirs.lora_bias,
        )
    weights = {"style": 0.6, "detail": -1.2, "speed": 0.9}
    ref.set_adapters(list(weights), list(weights.values()))
    lora_ops.set_adapter_weights(ours, weights)
    close(out(ours, x), out(ref, x), dtype)
    layer = ours.get_submodule("blocks.0.attn1.to_q")
    a = layer.lora_A["style"].weight
    source = loras["style"]["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    assert a.dtype == dtype and not a.requires_grad
    if dtype == source.dtype:  # the adapter tensors are the ones handed in (no copy)
        assert a.data_ptr() == source.data_ptr()
    # and diffusers' own calls keep working on adapters loaded this way
    ours.set_adapters(["detail"], [0.5])
    ref.set_adapters(["detail"], [0.5])
    close(out(ours, x), out(ref, x), dtype)
    with pytest.raises(ValueError, match="already in use"):
        lora_ops.load_adapter(ours, loras["style"], "style")


def test_load_adapter_refuses_bad_input_and_leaves_the_model_alone(demo_model_dir, loras):
    model = transformer(demo_model_dir)
    before = base_weights(model)
    bad = dict(loras["style"])
    key = "transformer.blocks.1.ffn.net.2.lora_B.weight"
    bad[key] = torch.zeros(bad[key].shape[0] + 1, bad[key].shape[1])
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.net\.2"):
        lora_ops.load_adapter(model, bad, "bad")
    with pytest.raises(lora_ops.UnsupportedLora):
        lora_ops.load_adapter(
            model,
            {**loras["style"], "transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(24)},
            "dora",
        )
    with pytest.raises(ValueError, match="no layer named"):
        lora_ops.load_adapter(model, {"transformer.blocks.9.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
                                      "transformer.blocks.9.attn1.to_q.lora_B.weight": torch.zeros(24, 4)}, "far")  # fmt: skip
    assert not lora_ops.lora_layers(model) and not getattr(model, "peft_config", None)
    assert_bit_identical(model, before)


def test_add_delete_cycles_leave_no_adapter_behind(demo_model_dir, loras, dtype):
    model = transformer(demo_model_dir, dtype)
    clean = base_weights(model)
    clean_keys = set(model.state_dict())
    clean_params = sum(p.numel() for p in model.parameters())
    x = inputs(model.config, seed=4, dtype=dtype)
    clean_out = out(model, x)
    refs = []
    for cycle in range(3):
        names = [f"{n}{cycle}" for n in ("style", "detail", "speed")]
        for name, source in zip(names, ("style", "detail", "speed"), strict=True):
            lora_ops.load_adapter(model, {k: v.clone() for k, v in loras[source].items()}, name)
        refs += [weakref.ref(p) for n, p in model.named_parameters() if "lora_" in n]
        lora_ops.set_adapter_weights(model, dict.fromkeys(names, 0.8))
        lora_ops.fuse(model)
        lora_ops.unfuse(model)
        # delete one, then the rest: the survivor's output equals a model that only ever had it
        lora_ops.delete_adapters(model, [names[0]])
        assert names[0] not in lora_ops.adapter_names(model) and names[0] not in model.peft_config
        assert not any(f".{names[0]}." in k for k in model.state_dict())
        only = transformer(demo_model_dir, dtype)
        lora_ops.load_adapter(only, loras["detail"], "detail")
        lora_ops.set_adapter_weights(only, {"detail": 0.8})
        lora_ops.set_adapter_weights(model, {names[1]: 0.8})
        assert torch.equal(out(model, x), out(only, x))
        lora_ops.delete_adapters(model, names[1:])
        assert not lora_ops.lora_layers(model)
        assert not hasattr(model, "peft_config")
        assert set(model.state_dict()) == clean_keys
        assert sum(p.numel() for p in model.parameters()) == clean_params
        assert_bit_identical(model, clean)
        assert torch.equal(out(model, x), clean_out)
    del only
    gc.collect()
    assert refs and all(r() is None for r in refs)


def test_delete_matches_diffusers_delete_adapters(pair, loras, dtype):
    ref, ours = pair
    for name in ("style", "detail", "motion"):
        diffusers_load(ref, loras[name], name)
        lora_ops.load_adapter(ours, loras[name], name)
    x = inputs(ref.config, seed=5, dtype=dtype)

    def with_adapters(model):  # diffusers keeps emptied LoRA layers; lora_ops unwraps them
        return {k: v for k, v in layer_state(model).items() if v[1]}

    # deleting the only active adapter: peft's rule activates the first remaining one by name
    for doomed in (["motion"], ["style"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.delete_adapters(doomed)
        lora_ops.delete_adapters(ours, doomed)
        assert with_adapters(ours) == with_adapters(ref)
        assert lora_ops.adapter_names(ours) == lora_ops.adapter_names(ref)
        assert set(ours.peft_config) == set(ref.peft_config)
        close(out(ours, x), out(ref, x), dtype)
    assert lora_ops.adapter_names(ours) == {"detail"}
    ref.set_adapters(["detail"], [1.4])
    lora_ops.set_adapter_weights(ours, {"detail": 1.4})
    close(out(ours, x), out(ref, x), dtype)
