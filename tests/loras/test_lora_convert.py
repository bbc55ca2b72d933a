"""Conversion to diffusers' PEFT layout: exact deltas for every layout, without a model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from studio.errors import LoraFileError
from studio.loras.convert import convert_lora, to_diffusers_state_dict
from studio.loras.synthetic import ALL_MODULES, make_lora_tensors, write_layout

BLOCK_MODULES = [f"blocks.{b}.{m}" for b in range(2) for m in ALL_MODULES]


def _pairs(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    out = {}
    for key in sd:
        if key.endswith(".lora_A.weight"):
            module = key[len("transformer.") : -len(".lora_A.weight")]
            out[module] = (
                sd[key],
                sd[f"transformer.{module}.lora_B.weight"],
                sd.get(f"transformer.{module}.lora_B.bias"),
            )
    return out


CASES = [
    ("peft", {}),
    ("original", {}),
    ("original", {"naming": "lora_down", "alpha": 8.0}),
    ("original", {"alpha": 2.0, "rank": 8}),
    ("lightx2v", {}),
    ("lightx2v", {"alpha": 6.0, "diff_b": "some"}),
    ("lightx2v", {"head_diff_b": False}),
    ("musubi", {"alpha": 2.0}),
    ("no_prefix", {}),
    ("no_prefix_diffusers", {}),
    ("lokr", {"alpha": 3.0}),
    ("lokr", {"lokr_decompose": False}),
    ("loha", {"alpha": 2.0}),
    ("loha", {"rank": 5}),
    ("dora", {"alpha": 4.0}),
]


@pytest.mark.parametrize(("layout", "options"), CASES)
def test_conversion_is_exact(tmp_path, config, tools, layout, options):
    path = write_layout(tmp_path / "x.safetensors", config, layout, **options)
    raw = load_file(str(path))
    sd, notes = to_diffusers_state_dict(raw)
    assert all(k.startswith("transformer.") for k in sd)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias")) for k in sd)
    pairs = _pairs(sd)
    expected_modules = set(BLOCK_MODULES) | ({"proj_out"} if layout == "lightx2v" else set())
    assert set(pairs) == expected_modules
    for module, (a, b, bias) in pairs.items():
        delta, ref_bias = tools.reference_delta(raw, layout, module if module != "proj_out" else "proj_out")
        torch.testing.assert_close(b.double() @ a.double(), delta, atol=1e-6, rtol=1e-5)
        assert a.shape[0] <= min(delta.shape)  # never more than full rank
        if ref_bias is None:
            assert bias is None
        else:
            torch.testing.assert_close(bias.double(), ref_bias.double())
    assert all(isinstance(n, str) and n.endswith(".") for n in notes)


def test_conversion_leaves_the_callers_tensors_alone(config):
    raw = make_lora_tensors(config, layout="original", alpha=2.0, rank=8)
    before = {k: v.clone() for k, v in raw.items()}
    convert_lora(raw)
    for key, value in raw.items():
        assert torch.equal(value, before[key]), key


def test_standard_layouts_use_diffusers_own_converter(config, monkeypatch):
    import studio.loras.convert as convert

    seen = []
    real = convert._diffusers_lora_state_dict
    monkeypatch.setattr(convert, "_diffusers_lora_state_dict", lambda sd: seen.append(sorted(sd)) or real(sd))
    convert_lora(make_lora_tensors(config, layout="original", alpha=4.0))
    convert_lora(make_lora_tensors(config, layout="musubi"))
    assert len(seen) == 2
    assert seen[0][0].startswith("diffusion_model.") and seen[1][0].startswith("lora_unet_")


def test_notes_say_what_happened(config):
    _, notes = to_diffusers_state_dict(make_lora_tensors(config, layout="dora"))
    assert any("DoRA" in n and "plain LoRA" in n for n in notes)
    _, notes = to_diffusers_state_dict(make_lora_tensors(config, layout="lightx2v"))
    assert any("norm-layer" in n for n in notes) and any("full-rank" in n for n in notes)
    _, notes = to_diffusers_state_dict(make_lora_tensors(config, layout="lokr"))
    assert any("LoKr" in n for n in notes)
    _, notes = to_diffusers_state_dict(make_lora_tensors(config, layout="no_prefix"))
    assert any("no prefix" in n for n in notes)
    result = convert_lora(make_lora_tensors(config, layout="dora"))
    assert len(result.ignored) == 20 and all(s.key.endswith("dora_scale") for s in result.ignored)


def test_partial_musubi_is_renamed_first(tmp_path, config, tools):
    raw = make_lora_tensors(
        config, layout="musubi", alpha=2.0, modules=["attn1.to_q", "ffn.net.2"], blocks=[1]
    )
    result = convert_lora(raw)
    assert set(_pairs(result.state_dict)) == {"blocks.1.attn1.to_q", "blocks.1.ffn.net.2"}
    assert any("every module" in n for n in result.notes)
    a, b, _ = _pairs(result.state_dict)["blocks.1.ffn.net.2"]
    delta, _ = tools.reference_delta(raw, "musubi", "blocks.1.ffn.net.2")
    torch.testing.assert_close(b.double() @ a.double(), delta)


def test_top_level_modules_with_alpha(config, tools):
    top = ["proj_out", "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1"]
    raw = make_lora_tensors(
        config, layout="original", alpha=2.0, top_level=top, blocks=[0], modules=["attn1.to_q"]
    )
    pairs = _pairs(to_diffusers_state_dict(raw)[0])
    assert set(pairs) == {"blocks.0.attn1.to_q", *top}
    for module in top:
        a, b, _ = pairs[module]
        torch.testing.assert_close(b.double() @ a.double(), tools.reference_delta(raw, "original", module)[0])
    only_top = make_lora_tensors(config, layout="original", top_level=["proj_out"], blocks=[])
    assert set(_pairs(to_diffusers_state_dict(only_top)[0])) == {"proj_out"}


def test_lone_k_img_is_converted_by_the_studio(config):
    raw = make_lora_tensors(
        config, layout="original", modules=["attn1.to_q", "attn2.add_k_proj"], image_attention=False
    )
    assert set(_pairs(to_diffusers_state_dict(raw)[0])) == {
        f"blocks.{b}.{m}" for b in range(2) for m in ("attn1.to_q", "attn2.add_k_proj")
    }


def test_peft_alpha_from_adapter_metadata(config):
    raw = make_lora_tensors(config, layout="peft", rank=4, blocks=[0], modules=["attn1.to_q", "attn1.to_k"])
    meta = {
        "lora_adapter_metadata": json.dumps(
            {"r": 4, "lora_alpha": 8, "alpha_pattern": {"blocks.0.attn1.to_k": 2}}
        )
    }
    sd, _ = to_diffusers_state_dict(raw, metadata=meta)
    q = "blocks.0.attn1.to_q"
    k = "blocks.0.attn1.to_k"
    torch.testing.assert_close(
        sd[f"transformer.{q}.lora_A.weight"], raw[f"transformer.{q}.lora_A.weight"] * 2.0
    )
    torch.testing.assert_close(
        sd[f"transformer.{k}.lora_A.weight"], raw[f"transformer.{k}.lora_A.weight"] * 0.5
    )


def test_bias_only_diff_b_needs_the_model_sizes(config):
    raw = make_lora_tensors(config, layout="original", blocks=[0], modules=["attn1.to_q"])
    raw["diffusion_model.time_projection.1.diff_b"] = torch.ones(144)
    without = convert_lora(raw)
    assert "transformer.condition_embedder.time_proj.lora_B.bias" not in without.state_dict
    assert [s.key for s in without.dropped] == ["diffusion_model.time_projection.1.diff_b"]
    with_sizes = convert_lora(raw, in_features=lambda m: 24 if m == "condition_embedder.time_proj" else None)
    sd = with_sizes.state_dict
    assert torch.equal(sd["transformer.condition_embedder.time_proj.lora_B.bias"], torch.ones(144))
    assert not sd["transformer.condition_embedder.time_proj.lora_A.weight"].any()


def test_unusable_keys_are_dropped_with_reasons(config):
    raw = make_lora_tensors(config, layout="original", blocks=[0], modules=["attn1.to_q"])
    raw["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 4)
    raw["diffusion_model.blocks.0.self_attn.k.lora_A.weight"] = torch.zeros(4, 24)  # no lora_B
    raw["diffusion_model.patch_embedding.lora_A.weight"] = torch.zeros(4, 36, 1, 2, 2)
    raw["diffusion_model.patch_embedding.lora_B.weight"] = torch.zeros(24, 4, 1, 1, 1)
    raw["lycoris_blocks_0_self_attn_v.lokr_w1"] = torch.zeros(4, 4)
    raw["lycoris_blocks_0_self_attn_v.lokr_t2"] = torch.zeros(4, 4, 1, 1)
    result = convert_lora(raw)
    reasons = {s.key: (s.kind, s.reason) for s in result.dropped}
    assert reasons["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"][0] == "unsupported_layout"
    assert "incomplete" in reasons["diffusion_model.blocks.0.self_attn.k.lora_A.weight"][1]
    assert "not a Linear" in reasons["diffusion_model.patch_embedding.lora_A.weight"][1]
    assert "Tucker" in reasons["lycoris_blocks_0_self_attn_v.lokr_t2"][1]
    assert set(_pairs(result.state_dict)) == {"blocks.0.attn1.to_q"}


def test_mixed_namings_are_refused(config):
    raw = make_lora_tensors(config, layout="original", blocks=[0])
    raw.update(make_lora_tensors(config, layout="peft", blocks=[1]))
    with pytest.raises(LoraFileError, match="mixes"):
        to_diffusers_state_dict(raw)


def test_memory_guard_for_huge_expansions(config):
    raw = make_lora_tensors(config, layout="lokr")
    with pytest.raises(LoraFileError, match="memory"):
        convert_lora(raw, max_bytes=1000)


def test_empty_and_unknown_dicts(config):
    assert to_diffusers_state_dict({}) == ({}, [])
    result = convert_lora({"foo.bar": torch.zeros(1)})
    assert result.state_dict == {} and result.dropped[0].key == "foo.bar"
