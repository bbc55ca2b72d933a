"""studio.engine.lora_ops against the diffusers/peft calls it replaces, on the demo transformer."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer

from studio.engine import lora_ops
from studio.loras.match import prepare_lora
from studio.loras.synthetic import make_lora_tensors, write_lora

ATOL = 1e-5


@pytest.fixture(scope="module")
def loras(demo_model_dir, demo_transformer_config, tmp_path_factory):
    """PEFT-layout state dicts made by the studio's own reader/converter from original-layout files."""
    folder = tmp_path_factory.mktemp("ops-loras")
    base = _transformer(demo_model_dir)
    specs = {
        "style": dict(rank=4, layout="original", seed=1),
        "detail": dict(rank=8, layout="original", seed=2, modules=["attn1.to_q", "ffn.net.2", "attn2.to_v"]),
        "motion": dict(rank=6, layout="original", seed=3, alpha=3.0),
        "speed": dict(rank=4, layout="lightx2v", seed=4),  # lora_down/up + diff_b (LoRA biases)
    }
    out = {}
    for name, spec in specs.items():
        path = write_lora(
            folder / f"{name}.safetensors", make_lora_tensors(demo_transformer_config, scale=0.3, **spec)
        )
        out[name] = prepare_lora(path, base, hash_file=False).state_dict
    return out


def _transformer(folder):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(folder, subfolder="transformer").eval()


@pytest.fixture()
def pair(demo_model_dir):
    """Two identical demo transformers: one driven by diffusers, one by lora_ops."""
    return _transformer(demo_model_dir), _transformer(demo_model_dir)


def _inputs(config, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, config.in_channels, 3, 8, 8, generator=gen),
        "timestep": torch.tensor([700]),
        "encoder_hidden_states": torch.randn(1, 12, config.text_dim, generator=gen),
        "return_dict": False,
    }


@torch.no_grad()
def _out(model, inputs):
    return model(**inputs)[0]


def _diffusers_load(model, state_dict, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_lora_adapter(dict(state_dict), adapter_name=name, prefix="transformer")


def _layer_state(model):
    return {
        layer_name: (list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
        for layer_name, layer in model.named_modules()
        if isinstance(layer, BaseTunerLayer)
    }


def _base_weights(model):
    """The base model's tensors by their plain names (a LoRA-wrapped layer adds ``base_layer.``)."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


def test_set_adapter_weights_matches_set_adapters(pair, loras):
    ref, ours = pair
    for name in ("style", "detail", "motion"):
        _diffusers_load(ref, loras[name], name)
        _diffusers_load(ours, loras[name], name)
    inputs = _inputs(ref.config)
    for weights in (
        {"style": 0.7, "motion": -1.3},
        {"detail": 2.0},
        {"style": 1.0, "detail": 0.0, "motion": 0.5},
    ):
        ref.enable_lora()
        ref.set_adapters(list(weights), list(weights.values()))
        lora_ops.set_adapter_weights(ours, weights)
        assert _layer_state(ours) == _layer_state(ref)
        torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    ref.disable_lora()
    lora_ops.set_adapter_weights(ours, {})
    assert _layer_state(ours) == _layer_state(ref)
    torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="not loaded"):
        lora_ops.set_adapter_weights(ours, {"nope": 1.0})


def test_fast_forward_matches_peft_forward(demo_model_dir, loras):
    model = _transformer(demo_model_dir)
    for name in ("style", "detail", "motion", "speed"):
        _diffusers_load(model, loras[name], name)
    inputs = _inputs(model.config, seed=1)
    for weights in (
        {"style": 0.8},
        {"speed": 1.5},
        {"style": 0.7, "detail": -0.4, "motion": 1.1, "speed": 0.9},
        {"style": 0.0, "detail": 1.0},
    ):
        lora_ops.set_adapter_weights(model, weights)
        lora_ops.disable_fast_forward(model)
        peft_out = _out(model, inputs)
        assert lora_ops.enable_fast_forward(model) > 0
        assert all(type(layer) is lora_ops.FastLoraLinear for layer in lora_ops.lora_layers(model))
        fast_out = _out(model, inputs)
        torch.testing.assert_close(fast_out, peft_out, atol=ATOL, rtol=0)
        lora_ops.disable_fast_forward(model)
        assert all(type(layer) is PeftLoraLinear for layer in lora_ops.lora_layers(model))


def test_fast_forward_takes_the_batched_path(demo_model_dir, loras, monkeypatch):
    """Under no_grad, with diffusers-loaded or lora_ops-loaded adapters, peft's forward never runs."""
    model = _transformer(demo_model_dir)
    _diffusers_load(model, loras["style"], "style")
    lora_ops.load_adapter(model, loras["detail"], "detail")
    lora_ops.set_adapter_weights(model, {"style": 0.5, "detail": 1.5})
    calls = []
    original = PeftLoraLinear.forward

    def counting(self, *args, **kwargs):
        calls.append(type(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PeftLoraLinear, "forward", counting)
    model.train()  # the mode does not matter with Identity dropout
    _out(model, _inputs(model.config))
    assert calls == []
    lora_ops.disable_fast_forward(model)
    _out(model, _inputs(model.config))
    assert len(calls) == len(lora_ops.lora_layers(model))


def test_load_adapter_matches_load_lora_adapter(pair, loras):
    ref, ours = pair
    inputs = _inputs(ref.config, seed=2)
    for name in ("style", "detail", "speed"):
        _diffusers_load(ref, loras[name], name)
        assert lora_ops.load_adapter(ours, loras[name], name) > 0
        # diffusers leaves only the newest adapter active, at weight 1
        assert _layer_state(ours) == _layer_state(ref)
        torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
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
    torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    # the adapter tensors are the ones handed in (no copy), frozen
    layer = ours.get_submodule("blocks.0.attn1.to_q")
    a = layer.lora_A["style"].weight
    assert a.data_ptr() == loras["style"]["transformer.blocks.0.attn1.to_q.lora_A.weight"].data_ptr()
    assert not a.requires_grad
    # and diffusers' own calls keep working on adapters loaded this way
    ours.set_adapters(["detail"], [0.5])
    ref.set_adapters(["detail"], [0.5])
    torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="already in use"):
        lora_ops.load_adapter(ours, loras["style"], "style")


def test_load_adapter_refuses_bad_input_and_leaves_the_model_alone(demo_model_dir, loras):
    model = _transformer(demo_model_dir)
    before = _base_weights(model)
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
    after = _base_weights(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_fuse_matches_fuse_lora_and_the_unfused_output(pair, loras):
    ref, ours = pair
    base = _base_weights(ours)
    weights = {"style": 0.7, "detail": -1.1, "motion": 0.4, "speed": 1.3}
    for name in weights:
        _diffusers_load(ref, loras[name], name)
        lora_ops.load_adapter(ours, loras[name], name)
    ref.set_adapters(list(weights), list(weights.values()))
    lora_ops.set_adapter_weights(ours, weights)
    inputs = _inputs(ref.config, seed=3)
    unfused = _out(ours, inputs)

    ref.fuse_lora()
    lora_ops.fuse(ours)
    assert lora_ops.is_fused(ours)
    fused_ref, fused_ours = _base_weights(ref), _base_weights(ours)
    for key in base:
        torch.testing.assert_close(fused_ours[key], fused_ref[key], atol=ATOL, rtol=0, msg=key)
    assert any(not torch.allclose(fused_ours[k], base[k]) for k in base)  # the fuse changed something
    torch.testing.assert_close(_out(ours, inputs), unfused, atol=ATOL, rtol=0)
    torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="unfuse"):
        lora_ops.set_adapter_weights(ours, {"style": 1.0})
    with pytest.raises(ValueError, match="merged"):
        lora_ops.delete_adapters(ours, ["style"])

    lora_ops.unfuse(ours)
    assert not lora_ops.is_fused(ours)
    restored = _base_weights(ours)
    for key in base:
        torch.testing.assert_close(restored[key], base[key], atol=1e-6, rtol=0, msg=key)
    torch.testing.assert_close(_out(ours, inputs), unfused, atol=ATOL, rtol=0)

    # peft's own unmerge undoes our fuse, and our unfuse undoes diffusers' fuse_lora
    lora_ops.fuse(ours)
    ours.unfuse_lora()
    lora_ops.unfuse(ref)
    for model in (ours, ref):
        restored = _base_weights(model)
        for key in base:
            torch.testing.assert_close(restored[key], base[key], atol=1e-6, rtol=0, msg=key)


def test_add_delete_cycles_leave_no_adapter_behind(demo_model_dir, loras):
    model = _transformer(demo_model_dir)
    clean_keys = set(model.state_dict())
    clean_params = sum(p.numel() for p in model.parameters())
    inputs = _inputs(model.config, seed=4)
    clean_out = _out(model, inputs)
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
        only = _transformer(demo_model_dir)
        lora_ops.load_adapter(only, loras["detail"], "detail")
        lora_ops.set_adapter_weights(only, {"detail": 0.8})
        lora_ops.set_adapter_weights(model, {names[1]: 0.8})
        torch.testing.assert_close(_out(model, inputs), _out(only, inputs), atol=ATOL, rtol=0)
        lora_ops.delete_adapters(model, names[1:])
        assert not lora_ops.lora_layers(model)
        assert not hasattr(model, "peft_config")
        assert set(model.state_dict()) == clean_keys
        assert sum(p.numel() for p in model.parameters()) == clean_params
        torch.testing.assert_close(_out(model, inputs), clean_out, atol=1e-6, rtol=0)
    del only
    gc.collect()
    assert refs and all(r() is None for r in refs)


def test_delete_matches_diffusers_delete_adapters(pair, loras):
    ref, ours = pair
    for name in ("style", "detail", "motion"):
        _diffusers_load(ref, loras[name], name)
        lora_ops.load_adapter(ours, loras[name], name)
    inputs = _inputs(ref.config, seed=5)

    def with_adapters(model):  # diffusers keeps emptied LoRA layers; lora_ops unwraps them
        return {k: v for k, v in _layer_state(model).items() if v[1]}

    # deleting the only active adapter: peft's rule activates the first remaining one by name
    for doomed in (["motion"], ["style"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.delete_adapters(doomed)
        lora_ops.delete_adapters(ours, doomed)
        assert with_adapters(ours) == with_adapters(ref)
        assert lora_ops.adapter_names(ours) == lora_ops.adapter_names(ref)
        assert set(ours.peft_config) == set(ref.peft_config)
        torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)
    assert lora_ops.adapter_names(ours) == {"detail"}
    ref.set_adapters(["detail"], [1.4])
    lora_ops.set_adapter_weights(ours, {"detail": 1.4})
    torch.testing.assert_close(_out(ours, inputs), _out(ref, inputs), atol=ATOL, rtol=0)


def test_fuse_pays_off_counts_flops(demo_model_dir, loras):
    model = _transformer(demo_model_dir)
    assert not lora_ops.fuse_pays_off(model, tokens=10**6, steps=40)  # nothing to fuse
    lora_ops.load_adapter(model, loras["style"], "style")
    lora_ops.set_adapter_weights(model, {"style": 1.0})
    # demo layers are 24 wide: fuse + unfuse ≈ 2·in·out/(in+out) = 24 token-steps of unfused work
    assert not lora_ops.fuse_pays_off(model, tokens=8, steps=2)
    assert lora_ops.fuse_pays_off(model, tokens=32, steps=2)
    lora_ops.set_adapter_weights(model, {})
    assert not lora_ops.fuse_pays_off(model, tokens=10**6, steps=40)
