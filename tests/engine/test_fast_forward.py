"""studio.engine.fast_forward: the batched unfused forward against peft's, in float32 and bf16."""

from __future__ import annotations

from lorakit import close, diffusers_load, inputs, out, tolerance, transformer
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from studio.engine import lora_ops
from studio.engine.fast_forward import FastLoraLinear, disable_fast_forward, enable_fast_forward


def test_fast_forward_matches_peft_forward(demo_model_dir, loras, dtype):
    model = transformer(demo_model_dir, dtype)
    for name in ("style", "detail", "motion", "speed"):
        diffusers_load(model, loras[name], name)
    x = inputs(model.config, seed=1, dtype=dtype)
    for weights in (
        {"style": 0.8},
        {"speed": 1.5},
        {"style": 0.7, "detail": -0.4, "motion": 1.1, "speed": 0.9},
        {"style": 0.0, "detail": 1.0},
    ):
        lora_ops.set_adapter_weights(model, weights)
        disable_fast_forward(model)
        peft_out = out(model, x)
        assert enable_fast_forward(model) > 0
        assert all(type(layer) is FastLoraLinear for layer in lora_ops.lora_layers(model))
        close(out(model, x), peft_out, dtype)
        disable_fast_forward(model)
        assert all(type(layer) is PeftLoraLinear for layer in lora_ops.lora_layers(model))


def test_fast_forward_takes_the_batched_path(demo_model_dir, loras, monkeypatch):
    """Under no_grad, with diffusers-loaded or lora_ops-loaded adapters, peft's forward never runs."""
    model = transformer(demo_model_dir)
    diffusers_load(model, loras["style"], "style")
    lora_ops.load_adapter(model, loras["detail"], "detail")
    lora_ops.set_adapter_weights(model, {"style": 0.5, "detail": 1.5})
    calls = []
    original = PeftLoraLinear.forward

    def counting(self, *args, **kwargs):
        calls.append(type(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PeftLoraLinear, "forward", counting)
    model.train()  # the mode does not matter with Identity dropout
    out(model, inputs(model.config))
    assert calls == []
    disable_fast_forward(model)
    out(model, inputs(model.config))
    assert len(calls) == len(lora_ops.lora_layers(model))


def test_a_partly_fused_module_runs_its_unfused_adapters(demo_model_dir, loras, dtype):
    """Fusing a subset leaves the other active adapters running (peft's forward would drop them)."""
    model = transformer(demo_model_dir, dtype)
    lora_ops.load_adapter(model, loras["style"], "style")
    lora_ops.load_adapter(model, loras["motion"], "motion")
    lora_ops.set_adapter_weights(model, {"style": 0.9, "motion": -0.7})
    x = inputs(model.config, seed=6, dtype=dtype)
    unfused = out(model, x)
    lora_ops.fuse(model, adapter_names=["style"])
    close(out(model, x), unfused, dtype)
    # peft's per-adapter loop (here: a training-mode dropout) also keeps the unfused adapter
    for layer in lora_ops.lora_layers(model):
        if "motion" in layer.lora_dropout:
            layer.lora_dropout["motion"] = nn.Dropout(p=0.0)
    model.train()
    close(out(model, x), unfused, dtype)
    model.eval()
    # the unfused adapter is re-weighted while the other stays fused; without it the output moves
    lora_ops.set_adapter_weights(model, {"style": 0.9, "motion": 0.0})
    assert (out(model, x) - unfused).abs().max() > 10 * tolerance(unfused, dtype)
