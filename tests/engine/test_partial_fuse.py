"""Fusing some adapters while others keep changing weight (schedules), on the demo transformer."""

from __future__ import annotations

import lorakit
import pytest
import torch

from studio.engine import lora_ops
from studio.loras.match import prepare_lora
from studio.loras.synthetic import make_lora_tensors, write_lora

ATOL = 1e-5


@pytest.fixture(scope="module")
def loras(demo_model_dir, demo_transformer_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("partial-loras")
    base = lorakit.transformer(demo_model_dir)
    specs = {
        "a": dict(rank=4, layout="original", seed=11),
        "b": dict(rank=8, layout="original", seed=12, modules=["attn1.to_q", "ffn.net.2", "attn2.to_v"]),
        "c": dict(rank=6, layout="original", seed=13, alpha=3.0),
        "d": dict(rank=4, layout="lightx2v", seed=14),  # with LoRA biases
    }
    out = {}
    for name, spec in specs.items():
        path = write_lora(
            folder / f"{name}.safetensors", make_lora_tensors(demo_transformer_config, scale=0.3, **spec)
        )
        out[name] = prepare_lora(path, base, hash_file=False).state_dict
    return out


def _close(got, want, rel):
    """Equal within float tolerance: float32 elementwise; bf16 by relative norm (its rounding is ~0.4%)."""
    got, want = got.float(), want.float()
    if rel is None:
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    else:
        error = (got - want).norm() / want.norm()
        assert error < rel, f"relative error {error:.4f}"


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, None), (torch.bfloat16, 0.02)])
def test_fused_constants_and_unfused_scheduled_match_all_unfused(demo_model_dir, loras, dtype, rel):
    ours, ref = lorakit.transformer(demo_model_dir, dtype), lorakit.transformer(demo_model_dir, dtype)
    for model in (ours, ref):
        for name in loras:
            lora_ops.load_adapter(model, loras[name], name)
    constant = {"a": 0.7, "d": 1.3}
    inputs = lorakit.inputs(ours.config, seed=5, dtype=dtype)
    lora_ops.set_adapter_weights(ours, {**constant, "b": 1.0, "c": 0.5})
    lora_ops.fuse(ours, adapter_names=list(constant))
    assert {a for layer in lora_ops.lora_layers(ours) for a in layer.merged_adapters} == set(constant)
    for step_weights in ({"b": 1.0, "c": 0.5}, {"b": 0.25, "c": 0.0}, {"b": 0.0, "c": -0.75}):
        lora_ops.set_adapter_weights(ours, {**constant, **step_weights})
        lora_ops.set_adapter_weights(ref, {**constant, **step_weights})
        _close(lorakit.out(ours, inputs), lorakit.out(ref, inputs), rel)
    # the scheduled adapters at 0: the partly fused model is the fused constants alone
    lora_ops.set_adapter_weights(ours, {**constant, "b": 0.0, "c": 0.0})
    lora_ops.set_adapter_weights(ref, constant)
    _close(lorakit.out(ours, inputs), lorakit.out(ref, inputs), rel)


def test_weights_of_fused_adapters_cannot_change_or_go(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    for name in ("a", "b"):
        lora_ops.load_adapter(model, loras[name], name)
    lora_ops.set_adapter_weights(model, {"a": 0.7, "b": 1.0})
    lora_ops.fuse(model, adapter_names=["a"])
    lora_ops.set_adapter_weights(model, {"a": 0.7, "b": 0.1})  # fine: only the unfused one changes
    with pytest.raises(RuntimeError, match="unfuse"):
        lora_ops.set_adapter_weights(model, {"a": 0.8, "b": 0.1})
    with pytest.raises(RuntimeError, match="unfuse"):
        lora_ops.set_adapter_weights(model, {"b": 0.1})
    with pytest.raises(RuntimeError, match="unfuse"):
        lora_ops.set_adapter_weights(model, {})
    lora_ops.unfuse(model)
    lora_ops.set_adapter_weights(model, {"b": 0.1})


def test_partly_fused_layers_take_the_generic_path_when_grads_flow(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    ref = lorakit.transformer(demo_model_dir)
    for m in (model, ref):
        for name in ("a", "c"):
            lora_ops.load_adapter(m, loras[name], name)
        lora_ops.set_adapter_weights(m, {"a": 0.7, "c": 0.4})
    lora_ops.fuse(model, adapter_names=["a"])
    inputs = lorakit.inputs(model.config, seed=2)
    inputs["hidden_states"].requires_grad_(True)
    with torch.enable_grad():
        got = model(**inputs)[0]
    torch.testing.assert_close(got.detach(), lorakit.out(ref, inputs), atol=ATOL, rtol=0)


def test_fuse_pays_off_counts_only_the_named_unfused_adapters(demo_model_dir, loras):
    model = lorakit.transformer(demo_model_dir)
    for name in ("a", "b"):
        lora_ops.load_adapter(model, loras[name], name)
    lora_ops.set_adapter_weights(model, {"a": 1.0, "b": 1.0})
    tokens = 32_760
    assert lora_ops.fuse_pays_off(model, tokens, 1, adapter_names=["a"])
    assert not lora_ops.fuse_pays_off(model, tokens, 1, adapter_names=[])
    lora_ops.fuse(model, adapter_names=["a"])
    assert not lora_ops.fuse_pays_off(model, tokens, 1, adapter_names=["a"])  # already fused
    assert lora_ops.fuse_pays_off(model, tokens, 1)  # b is still unfused
