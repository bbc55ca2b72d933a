"""studio.engine.fuse: fusing matches diffusers' fuse_lora, and unfusing gives back the loaded weights bit for bit.

``W + ΔW − ΔW`` is not ``W`` once rounded to bf16: without the backups these tests fail
after one cycle in bf16 (20+ tensors off, 2% of their range) and after 50 weight
changes the error reaches the size of the weights.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from lorakit import (
    assert_bit_identical,
    base_weights,
    close,
    differing,
    diffusers_load,
    inputs,
    out,
    transformer,
)

from studio.engine import lora_ops
from studio.engine.fuse import FuseRefused, backup_bytes, is_fused

CYCLES = 50


def _weights(names, cycle):
    """A different, non-zero weight for every adapter on every cycle (negative and above 1 too)."""
    return {
        n: round(0.2 + 1.3 * torch.sin(torch.tensor(3.0 * cycle + i + 1.0)).item(), 3) or 0.5
        for i, n in enumerate(names)
    }


def _touched_bytes(model):
    total = 0
    for layer in lora_ops.lora_layers(model):
        base = layer.get_base_layer()
        total += sum(t.numel() * t.element_size() for t in (base.weight, base.bias) if t is not None)
    return total


def _cycles(model, names, cycles, *, reference=None, subset=None):
    """``cycles`` × (new weights → fuse → unfuse); each fuse must change the weights."""
    for cycle in range(cycles):
        lora_ops.set_adapter_weights(model, _weights(names, cycle))
        lora_ops.fuse(model, adapter_names=subset)
        assert is_fused(model)
        if reference is not None and cycle == 0:
            assert differing(model, reference)  # the fuse really wrote into the weights
        lora_ops.unfuse(model)
        assert not is_fused(model)


def test_fuse_matches_fuse_lora_and_the_unfused_output(demo_model_dir, loras, dtype):
    ref, ours = transformer(demo_model_dir, dtype), transformer(demo_model_dir, dtype)
    base = base_weights(ours)
    weights = {"style": 0.7, "detail": -1.1, "motion": 0.4, "speed": 1.3}
    for name in weights:
        diffusers_load(ref, loras[name], name)
        lora_ops.load_adapter(ours, loras[name], name)
    ref.set_adapters(list(weights), list(weights.values()))
    lora_ops.set_adapter_weights(ours, weights)
    x = inputs(ref.config, seed=3, dtype=dtype)
    unfused = out(ours, x)

    ref.fuse_lora()
    lora_ops.fuse(ours)
    assert lora_ops.is_fused(ours)
    fused_ref, fused_ours = base_weights(ref), base_weights(ours)
    for key in base:
        close(fused_ours[key], fused_ref[key], dtype)
    assert differing(ours, base)  # the fuse changed something
    close(out(ours, x), unfused, dtype)
    close(out(ours, x), out(ref, x), dtype)
    with pytest.raises(RuntimeError, match="unfuse"):
        lora_ops.set_adapter_weights(ours, {**weights, "style": 1.0})
    with pytest.raises(ValueError, match="merged"):
        lora_ops.delete_adapters(ours, ["style"])

    lora_ops.unfuse(ours)
    assert not lora_ops.is_fused(ours)
    assert_bit_identical(ours, base)
    assert torch.equal(out(ours, x), unfused)

    # diffusers' own unfuse_lora undoes our fuse exactly, and our unfuse undoes diffusers'
    # fuse_lora exactly, on layers with the studio's forward (the manager always gives them that)
    lora_ops.fuse(ours)
    ours.unfuse_lora()
    assert_bit_identical(ours, base)
    ref.unfuse_lora()
    lora_ops.enable_fast_forward(ref)
    ref_base = base_weights(ref)
    ref.fuse_lora()
    assert differing(ref, ref_base)
    lora_ops.unfuse(ref)
    assert_bit_identical(ref, ref_base)


@pytest.mark.parametrize(
    "precision", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
def test_50_weight_changes_leave_every_base_weight_bit_identical(demo_model_dir, loras, precision):
    """The soak: 50 × (new weights → fuse → unfuse), then the stack removed: every tensor as loaded."""
    model = transformer(demo_model_dir, precision)
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(model.config, seed=7, dtype=precision)
    clean_out = out(model, x)
    names = ["style", "motion", "speed"]  # two LoRA layouts and lightx2v's diff_b biases + head diff
    for name in names:
        lora_ops.load_adapter(model, loras[name], name)
    _cycles(model, names, CYCLES, reference=base_weights(model))
    assert backup_bytes(model) == _touched_bytes(model) > 0  # one backup per touched module, kept
    lora_ops.delete_adapters(model, names)
    now = model.state_dict()
    assert now.keys() == loaded.keys()
    changed = [k for k in loaded if not torch.equal(now[k], loaded[k])]
    assert not changed, f"{len(changed)} of {len(loaded)} tensors differ from the loaded model"
    assert torch.equal(out(model, x), clean_out)


def test_backups_go_with_the_last_adapter_of_a_module(demo_model_dir, loras):
    model = transformer(demo_model_dir, torch.bfloat16)
    lora_ops.load_adapter(model, loras["style"], "style")  # every block Linear
    lora_ops.load_adapter(model, loras["detail"], "detail")  # three modules of each block
    lora_ops.set_adapter_weights(model, {"style": 1.0, "detail": 1.0})
    assert backup_bytes(model) == 0  # nothing fused yet: nothing kept
    lora_ops.fuse(model)
    lora_ops.unfuse(model)
    everything = backup_bytes(model)
    assert everything == _touched_bytes(model)
    lora_ops.delete_adapters(model, ["style"])  # the layers left with "detail" keep theirs
    assert 0 < backup_bytes(model) == _touched_bytes(model) < everything
    lora_ops.delete_adapters(model, ["detail"])
    assert backup_bytes(model) == 0 and not lora_ops.lora_layers(model)


def test_a_subset_fuse_is_exact_and_leaves_the_rest_adjustable(demo_model_dir, loras, dtype):
    """Constant LoRAs fused, scheduled ones unfused and re-weighted between steps, then all unfused."""
    model = transformer(demo_model_dir, dtype)
    base = base_weights(model)
    for name in ("style", "motion", "speed"):
        lora_ops.load_adapter(model, loras[name], name)
    x = inputs(model.config, seed=8, dtype=dtype)
    for cycle in range(5):
        weights = {"style": 0.8, "motion": 0.3 * cycle - 0.5, "speed": 1.1}
        lora_ops.set_adapter_weights(model, weights)
        unfused = out(model, x)
        lora_ops.fuse(model, adapter_names=["style", "speed"])
        close(out(model, x), unfused, dtype)
        for step_weight in (0.0, 1.7, -0.4):  # a per-step schedule of the unfused adapter
            lora_ops.set_adapter_weights(model, {**weights, "motion": step_weight})
        with pytest.raises(RuntimeError, match="'style' is fused"):
            lora_ops.set_adapter_weights(model, {**weights, "style": 0.5})
        with pytest.raises(RuntimeError, match="fused"):
            lora_ops.set_adapter_weights(model, {"motion": 1.0})  # a fused one left out
        lora_ops.fuse(model, adapter_names=["motion"])  # then the rest too
        lora_ops.unfuse(model)
        assert not is_fused(model)
    lora_ops.delete_adapters(model, ["style", "motion", "speed"])
    assert_bit_identical(model, base)


@pytest.mark.parametrize("layouts", [("lokr", "loha"), ("speed",)], ids=["lokr-loha", "diff-diff_b"])
def test_converted_layers_unfuse_exactly_in_bf16(demo_model_dir, loras, layouts):
    """LyCORIS LoKr/LoHa (converted to LoRA factors) and lightx2v diff/diff_b (full-rank pairs, biases)."""
    model = transformer(demo_model_dir, torch.bfloat16)
    base = base_weights(model)
    for name in layouts:
        lora_ops.load_adapter(model, loras[name], name)
    _cycles(model, list(layouts), 3, reference=base)
    assert_bit_identical(model, base)
    if "speed" in layouts:  # the diff_b biases went into base biases and came back out
        assert any(layer.lora_bias.get("speed") for layer in lora_ops.lora_layers(model))


def test_diffusers_loaded_adapters_unfuse_exactly_in_bf16(demo_model_dir, loras):
    """The manager's fallback loader (diffusers' load_lora_adapter) and diffusers' fuse_lora/unfuse_lora."""
    model = transformer(demo_model_dir, torch.bfloat16)
    base = base_weights(model)
    for name in ("style", "speed"):
        diffusers_load(model, loras[name], name)
    lora_ops.enable_fast_forward(model)  # what the manager does after diffusers' loader
    _cycles(model, ["style", "speed"], 3, reference=base)
    assert_bit_identical(model, base)
    for cycle in range(3):
        model.set_adapters(["style", "speed"], list(_weights(["style", "speed"], cycle).values()))
        model.fuse_lora()
        model.unfuse_lora()
    assert_bit_identical(model, base)
    model.fuse_lora()
    model.disable_lora()  # peft unmerges when adapters are disabled while fused
    out(model, inputs(model.config, dtype=torch.bfloat16))
    assert not is_fused(model)
    assert_bit_identical(model, base)


def test_peft_merge_fallback_is_undone_exactly(demo_model_dir, loras):
    """Layers the one-matmul fuse does not handle (a DoRA adapter) go through peft's merge, same backup."""
    model = transformer(demo_model_dir, torch.bfloat16)
    base = base_weights(model)
    dora = {**loras["style"], "transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.rand(24) + 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diffusers_load(model, dora, "dora")
    layer = model.get_submodule("blocks.0.attn1.to_q")
    assert "dora" in layer.lora_variant
    lora_ops.enable_fast_forward(model)
    x = inputs(model.config, seed=9, dtype=torch.bfloat16)
    lora_ops.set_adapter_weights(model, {"dora": 0.9})
    unfused = out(model, x)
    _cycles(model, ["dora"], 3, reference=base)
    lora_ops.set_adapter_weights(model, {"dora": 0.9})
    lora_ops.fuse(model)
    close(out(model, x), unfused, torch.bfloat16)
    lora_ops.unfuse(model)
    assert_bit_identical(model, base)


def test_fp8_weights_refuse_fusing_and_stay_untouched(demo_model_dir, loras):
    model = transformer(demo_model_dir, torch.float32)
    lora_ops.load_adapter(model, loras["style"], "style")
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    lora_ops.set_adapter_weights(model, {"style": 1.0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FuseRefused, match="fp8"):
        lora_ops.fuse(model)
    assert not is_fused(model) and backup_bytes(model) == 0
    after = model.state_dict()
    assert all(torch.equal(after[k].view(torch.uint8), before[k].view(torch.uint8)) for k in before)


def test_group_offload_unfuses_exactly(demo_model_dir, loras):
    model = transformer(demo_model_dir, torch.bfloat16)
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    cpu = torch.device("cpu")
    model.enable_group_offload(
        onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1
    )
    x = inputs(model.config, seed=10, dtype=torch.bfloat16)
    clean_out = out(model, x)
    for name in ("style", "speed"):
        lora_ops.load_adapter(model, loras[name], name)  # through diffusers: it re-applies the hooks
    for cycle in range(5):
        lora_ops.set_adapter_weights(model, _weights(["style", "speed"], cycle))
        lora_ops.fuse(model)
        out(model, x)  # a render moves the groups on and off the device
        lora_ops.unfuse(model)
    lora_ops.delete_adapters(model, ["style", "speed"])
    assert backup_bytes(model) == 0
    now = base_weights(model)
    assert all(torch.equal(now[k], loaded[k]) for k in loaded)
    assert torch.equal(out(model, x), clean_out)
