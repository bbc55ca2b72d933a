"""The key layouts real trainers write: VideoX-Fun, DiffSynth-Studio, PEFT saves, ai-toolkit two-expert files,
and lightx2v's Wan2.2 I2V files with their Wan2.1 leftovers. Each loads exactly (module output equals
base + weight·B·A·x), on the right expert, with the same checks and match report as every other layout."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file

from studio.errors import LoraFileError
from studio.loras.compat import check_compat
from studio.loras.inspect import LAYOUT_LABELS, inspect_lora
from studio.loras.match import prepare_lora
from studio.loras.synthetic import make_lora_tensors, write_layout

_names = (f"layout{i}" for i in itertools.count())

# layout -> (the first key of its files, exactly as the trainer writes it)
FIRST_KEYS = {
    "videox_fun": "lora_unet__blocks_0_cross_attn_k.lora_down.weight",
    "diffsynth": "blocks.0.self_attn.q.lora_A.default.weight",
    "peft_wan": "base_model.model.blocks.1.ffn.0.lora_A.weight",
    "ai_toolkit": "diffusion_model.transformer_1.blocks.0.self_attn.q.lora_A.weight",
    "lightx2v_i2v": "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight",
}
CHECKED = ["blocks.0.attn1.to_q", "blocks.1.attn2.to_k", "blocks.1.attn2.to_out.0"]
FFN = ["blocks.0.ffn.net.0.proj", "blocks.1.ffn.net.2"]


@pytest.fixture
def loaded(demo_pipe):
    """Load prepared LoRAs into the demo pipeline's experts; adapters are removed after the test."""
    names: list[tuple[str, str]] = []

    def _load(prepared, component: str = "transformer") -> str:
        name = next(_names)
        demo_pipe.load_lora_weights(
            prepared.state_dict,
            adapter_name=name,
            load_into_transformer_2=component == "transformer_2",
            **prepared.load_kwargs,
        )
        names.append((component, name))
        return name

    yield _load
    for component, name in names:
        getattr(demo_pipe, component).delete_adapters(name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["videox_fun", "diffsynth", "peft_wan", "lightx2v_i2v"])
def test_each_layout_loads_exactly_with_a_full_match(
    tmp_path, config, demo_pipe, loaded, tools, layout, dtype
):
    path = write_layout(tmp_path / f"{layout}.safetensors", config, layout, scale=0.2, dtype=dtype)
    raw = load_file(str(path))
    assert FIRST_KEYS[layout] in raw
    info = inspect_lora(path, hash_file=False)
    expected = "lightx2v" if layout == "lightx2v_i2v" else layout  # lightx2v files, with leftovers
    assert info.layout == expected and info.layout_label == LAYOUT_LABELS[expected]
    assert info.model_dim == 24 and info.unknown_keys == 0
    compat = check_compat(info, config)
    assert compat.level == "compatible" and compat.percent == 100.0, compat

    prepared = prepare_lora(path, demo_pipe.transformer)
    assert prepared.report.percent == 100.0 and prepared.report.skipped == []
    assert (
        prepared.report.matched_modules
        == prepared.report.total_modules
        == info.num_modules
        - (
            6 if layout == "lightx2v_i2v" else 0  # k_img/v_img of 2 blocks + img_emb.proj.1/3 are leftovers
        )
    )
    name = loaded(prepared)
    modules = CHECKED + ([] if layout == "videox_fun" else FFN)
    for module in modules:
        delta, bias = tools.reference_delta(raw, layout, module)
        tools.assert_module_delta(demo_pipe, name, module, delta, bias)
        tools.assert_module_delta(demo_pipe, name, module, delta, bias, weight=0.7)


def test_videox_fun_reward_lora_rank_128_alpha_64_without_ffn(tmp_path, config, demo_pipe, loaded, tools):
    path = write_layout(tmp_path / "reward.safetensors", config, "videox_fun", rank=128, scale=0.05)
    raw = load_file(str(path))
    assert raw["lora_unet__blocks_0_cross_attn_k.alpha"].item() == 64.0
    assert not any("ffn" in k for k in raw)
    info = inspect_lora(path, hash_file=False)
    assert (info.rank, info.alpha, info.naming, info.key_prefix) == (128, 64.0, "musubi", "lora_unet__")
    assert info.module_kinds == ["cross_attn", "self_attn"] and info.num_modules == 16

    # diffusers' own Wan converter cannot read these keys: the studio's conversion is what makes them load
    from diffusers import WanImageToVideoPipeline

    with pytest.raises(KeyError):
        WanImageToVideoPipeline.lora_state_dict(dict(raw), use_safetensors=True)

    prepared = prepare_lora(path, demo_pipe.transformer)
    assert prepared.report.percent == 100.0 and prepared.report.total_modules == 16
    name = loaded(prepared)
    delta, bias = tools.reference_delta(raw, "videox_fun", "blocks.1.attn1.to_v")
    down = raw["lora_unet__blocks_1_self_attn_v.lora_down.weight"].double()
    up = raw["lora_unet__blocks_1_self_attn_v.lora_up.weight"].double()
    torch.testing.assert_close(delta, 0.5 * up @ down)  # alpha / rank = 64 / 128
    tools.assert_module_delta(demo_pipe, name, "blocks.1.attn1.to_v", delta, bias)


def test_peft_save_with_diffusers_names_still_reads_as_diffusers(tmp_path, config, demo_pipe):
    tensors = make_lora_tensors(config, layout="peft")
    renamed = {k.replace("transformer.", "base_model.model.", 1): v for k, v in tensors.items()}
    from studio.loras.synthetic import write_lora

    path = write_lora(tmp_path / "peft_diffusers.safetensors", renamed)
    info = inspect_lora(path, hash_file=False)
    assert info.layout == "diffusers" and info.naming == "diffusers"
    assert prepare_lora(path, demo_pipe.transformer).report.percent == 100.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_ai_toolkit_two_expert_file_gives_each_expert_its_half(
    tmp_path, config, demo_pipe, loaded, tools, dtype
):
    path = write_layout(tmp_path / "both.safetensors", config, "ai_toolkit", scale=0.2, dtype=dtype)
    raw = load_file(str(path))
    assert FIRST_KEYS["ai_toolkit"] in raw
    assert "diffusion_model.transformer_2.blocks.1.ffn.2.lora_B.weight" in raw
    info = inspect_lora(path, hash_file=False)
    assert info.layout == "ai_toolkit" and info.experts_in_file == ["high", "low"]
    assert info.expert_hint is None and info.num_modules == 40  # 20 modules per half
    assert any("both experts in one file" in n for n in info.notes)
    compat = check_compat(info, config)
    assert compat.level == "compatible" and any("transformer_1 half" in n for n in compat.notes)

    high = prepare_lora(path, demo_pipe.transformer, expert="high")
    low = prepare_lora(path, demo_pipe.transformer_2, expert="low")
    for prepared in (high, low):
        assert prepared.report.percent == 100.0 and prepared.report.total_modules == 20
    a = loaded(high, "transformer")
    b = loaded(low, "transformer_2")
    for module in CHECKED + FFN:
        for expert, component, name in (("high", "transformer", a), ("low", "transformer_2", b)):
            delta, bias = tools.reference_delta(raw, "ai_toolkit", module, expert)
            tools.assert_module_delta(demo_pipe, name, module, delta, bias, component=component)
    # the two halves really differ (so landing on the wrong expert would show)
    d_high, _ = tools.reference_delta(raw, "ai_toolkit", "blocks.0.attn1.to_q", "high")
    d_low, _ = tools.reference_delta(raw, "ai_toolkit", "blocks.0.attn1.to_q", "low")
    assert not torch.allclose(d_high, d_low)


def test_ai_toolkit_file_with_one_half(tmp_path, config, demo_pipe):
    path = write_layout(tmp_path / "half.safetensors", config, "ai_toolkit", experts=("low",))
    info = inspect_lora(path, hash_file=False)
    assert info.experts_in_file == ["low"]
    assert (info.expert_hint, info.expert_hint_source) == ("low", "keys")
    assert prepare_lora(path, demo_pipe.transformer_2, expert="low").report.percent == 100.0
    assert prepare_lora(path, demo_pipe.transformer_2).report.percent == 100.0  # no expert named: its half
    with pytest.raises(LoraFileError, match=r"holds only the low-noise half.*put it on the low-noise expert"):
        prepare_lora(path, demo_pipe.transformer, expert="high")


def test_lightx2v_wan22_i2v_leftovers_read_compatible_with_a_note(tmp_path, config, demo_pipe):
    path = write_layout(tmp_path / "wan2.2_i2v_lightx2v.safetensors", config, "lightx2v_i2v")
    raw = load_file(str(path))
    for key in (
        "diffusion_model.blocks.1.cross_attn.v_img.lora_up.weight",
        "diffusion_model.blocks.0.cross_attn.norm_k_img.diff",
        "diffusion_model.img_emb.proj.1.lora_down.weight",
        "diffusion_model.img_emb.proj.4.diff_b",
        "diffusion_model.blocks.1.diff_m",
    ):
        assert key in raw
    info = inspect_lora(path, hash_file=False)
    assert info.unknown_keys == 0 and info.task == "i2v"
    compat = check_compat(info, config)
    assert compat.level == "compatible" and compat.percent == 100.0
    assert "partial" not in compat.reason.lower()
    (note,) = [n for n in compat.notes if "image-branch" in n]
    assert "k_img/v_img, img_emb: 6 module(s)" in note and "everything else lands" in note

    prepared = prepare_lora(path, demo_pipe.transformer)
    report = prepared.report
    assert report.percent == 100.0 and report.skipped == []
    ignored = {s.key for s in report.ignored}
    assert "diffusion_model.blocks.1.diff_m" in ignored  # left out like norm diffs
    assert "diffusion_model.blocks.0.cross_attn.norm_k_img.diff" in ignored
    assert "transformer.blocks.0.attn2.add_k_proj.lora_A.weight" in ignored
    assert any("image_embedder" in k for k in ignored)
    assert any("modulation diff" in n for n in prepared.notes)
    assert any("image-branch" in n for n in prepared.notes)
    assert not any("do not fit" in n for n in prepared.notes)
