"""The header-only compatibility badge agrees with the real load (prepare_lora + match report)."""

from __future__ import annotations

import pytest
import torch

from studio.errors import LoraFileError
from studio.loras.compat import (
    KNOWN_TRANSFORMER_CONFIGS,
    WAN22_I2V_A14B_TRANSFORMER_CONFIG,
    WAN22_TI2V_5B_TRANSFORMER_CONFIG,
    Compat,
    check_compat,
    known_transformer_config,
    model_dim_of_config,
)
from studio.loras.inspect import inspect_lora
from studio.loras.match import prepare_lora
from studio.loras.synthetic import (
    LAYOUTS,
    WAN_1_3B_CONFIG,
    WAN_5B_CONFIG,
    WAN_14B_CONFIG,
    make_lora_tensors,
    write_layout,
    write_lora,
)

# (name, layout, options): every layout synthetic can write, plus variants that land partly or not at all.
CASES = [(layout, layout, {}) for layout in LAYOUTS] + [
    ("original-lora_down-alpha", "original", {"naming": "lora_down", "alpha": 8.0}),
    ("lightx2v-some-diff_b", "lightx2v", {"diff_b": "some", "head_diff_b": False}),
    ("musubi-one-block", "musubi", {"blocks": [1]}),
    ("lokr-full-w2", "lokr", {"lokr_decompose": False}),
    ("top-level", "original", {"top_level": ["proj_out", "condition_embedder.time_proj"], "alpha": 2.0}),
    ("i2v-k_img-only-block-0", "original", {"image_attention": True, "blocks": [0]}),
    ("i2v-musubi", "musubi", {"image_attention": True}),
    ("i2v-peft", "peft", {"image_attention": True}),
    ("some-blocks-beyond", "original", {"blocks": [0, 1, 2, 3, 4]}),
    ("i2v-and-blocks-beyond", "i2v", {"blocks": [1, 2, 3]}),
    ("only-blocks-beyond", "peft", {"blocks": [2, 7]}),
    ("only-blocks-beyond-i2v", "i2v", {"blocks": [5]}),
    ("lokr-blocks-beyond", "lokr", {"blocks": [0, 9]}),
    ("only-image-attention", "original", {"modules": [], "image_attention": True}),
]
WRONG_SIZE = [
    ("14B", WAN_14B_CONFIG, "original", {}),
    ("14B-i2v", WAN_14B_CONFIG, "i2v", {}),
    ("1.3B-musubi", WAN_1_3B_CONFIG, "musubi", {}),
    ("5B-peft", WAN_5B_CONFIG, "peft", {}),
    ("14B-lokr", WAN_14B_CONFIG, "lokr", {}),
]


def _real(path, transformer) -> float | None:
    """The real percentage that lands, or None when prepare_lora refuses the file."""
    try:
        return prepare_lora(path, transformer, hash_file=False).report.percent
    except LoraFileError:
        return None


def _agrees(compat: Compat, real: float | None) -> None:
    if real is None:
        assert compat.level == "incompatible", compat
        assert compat.percent == 0.0
    elif real == 100.0:
        assert compat.level == "compatible", (compat, real)
        assert compat.percent == 100.0
    else:
        assert 0 < real < 100
        assert compat.level == "partial", (compat, real)
        assert 0 < compat.percent < 100
        assert compat.percent == pytest.approx(real, abs=0.01)  # exact for these files
    assert compat.reason.endswith(".") and compat.reason[0].isupper()


@pytest.mark.parametrize(("name", "layout", "options"), CASES, ids=[c[0] for c in CASES])
def test_badge_agrees_with_the_real_load(tmp_path, config, demo_pipe, name, layout, options):
    path = write_layout(tmp_path / f"{name}.safetensors", config, layout, rank=2, **options)
    compat = check_compat(inspect_lora(path, hash_file=False), config)
    _agrees(compat, _real(path, demo_pipe.transformer))


@pytest.mark.parametrize(("name", "cfg", "layout", "options"), WRONG_SIZE, ids=[c[0] for c in WRONG_SIZE])
def test_wrong_model_size_is_incompatible_and_says_both_sizes(
    tmp_path, config, demo_pipe, name, cfg, layout, options
):
    tensors = make_lora_tensors(
        cfg, layout=layout, rank=2, blocks=[0, 1], modules=["attn1.to_q", "ffn.net.2"], **options
    )
    path = write_lora(tmp_path / f"{name}.safetensors", tensors)
    compat = check_compat(inspect_lora(path, hash_file=False), config)
    _agrees(compat, _real(path, demo_pipe.transformer))
    lora_dim = model_dim_of_config(cfg)
    assert f"dim {lora_dim}" in compat.reason
    assert "the demo model (dim 24)" in compat.reason


def test_sentences_name_what_is_skipped(tmp_path, config):
    i2v = inspect_lora(write_layout(tmp_path / "i2v.safetensors", config, "i2v"), hash_file=False)
    compat = check_compat(i2v, config)
    # Wan2.1 I2V image attention has nothing to land on in a Wan2.2 model: a leftover, not a miss
    assert compat.level == "compatible" and compat.percent == 100.0
    assert any("k_img/v_img" in n and "4 module" in n and "no image attention" in n for n in compat.notes)

    beyond = inspect_lora(
        write_layout(tmp_path / "beyond.safetensors", config, "peft", blocks=[0, 1, 2, 3]), hash_file=False
    )
    compat = check_compat(beyond, config)
    assert compat.level == "partial" and compat.percent == 50.0
    assert "blocks 2–3 do not exist" in compat.reason and "2 blocks" in compat.reason

    only = inspect_lora(
        write_layout(tmp_path / "only.safetensors", config, "peft", blocks=[4, 5, 9]), hash_file=False
    )
    compat = check_compat(only, config)
    assert compat.level == "incompatible"
    assert "only targets blocks 4–5, 9" in compat.reason

    lokr = check_compat(
        inspect_lora(write_layout(tmp_path / "k.safetensors", config, "lokr"), hash_file=False), config
    )
    assert lokr.level == "compatible" and any("LoKr" in n for n in lokr.notes)
    assert Compat.model_validate_json(lokr.model_dump_json()) == lokr


def test_not_a_wan_lora(tmp_path, config):
    path = write_lora(
        tmp_path / "sd15.safetensors",
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)},
    )
    compat = check_compat(inspect_lora(path, hash_file=False), config)
    assert compat.level == "incompatible" and "does not look like a Wan LoRA" in compat.reason
    only_alpha = write_lora(
        tmp_path / "alpha.safetensors", {"diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0)}
    )
    compat = check_compat(inspect_lora(only_alpha, hash_file=False), config)
    assert compat.level == "incompatible" and "no LoRA weights" in compat.reason


def test_real_model_configs(tmp_path):
    """Big files are only headers here: a 14B-shaped LoRA checked against the real A14B config."""
    assert model_dim_of_config(WAN22_I2V_A14B_TRANSFORMER_CONFIG) == 5120
    assert model_dim_of_config(WAN22_TI2V_5B_TRANSFORMER_CONFIG) == 3072
    assert WAN22_I2V_A14B_TRANSFORMER_CONFIG["num_layers"] == 40
    assert WAN22_I2V_A14B_TRANSFORMER_CONFIG["image_dim"] is None
    assert WAN22_TI2V_5B_TRANSFORMER_CONFIG["in_channels"] == 48
    assert set(KNOWN_TRANSFORMER_CONFIGS) == {"wan2.2-i2v-a14b", "wan2.2-ti2v-5b"}
    assert known_transformer_config("demo")["num_layers"] == 2
    assert known_transformer_config("nope") is None

    a14b = WAN22_I2V_A14B_TRANSFORMER_CONFIG
    opts = dict(rank=1, modules=["attn1.to_q", "attn2.to_k"], blocks=range(40))
    t2v = inspect_lora(
        write_layout(tmp_path / "t2v.safetensors", WAN_14B_CONFIG, "original", **opts), hash_file=False
    )
    compat = check_compat(t2v, a14b, model_name="Wan2.2 I2V A14B")
    assert compat.level == "compatible" and "Wan2.2 I2V A14B (dim 5120)" in compat.reason

    wan21_i2v = inspect_lora(
        write_layout(tmp_path / "i2v21.safetensors", WAN_14B_CONFIG, "i2v", **opts), hash_file=False
    )
    compat = check_compat(wan21_i2v, a14b)
    assert compat.level == "compatible"  # both modules A14B has land; k_img/v_img are leftovers
    assert any("80 module(s)" in n for n in compat.notes)
    # ...and it fits a Wan2.1 I2V model (which has image attention) completely
    wan21_config = dict(a14b, image_dim=1280, added_kv_proj_dim=5120)
    assert check_compat(wan21_i2v, wan21_config).level == "compatible"

    compat = check_compat(t2v, WAN22_TI2V_5B_TRANSFORMER_CONFIG)
    assert compat.level == "incompatible"
    assert "Wan 14B (dim 5120)" in compat.reason and "Wan2.2 TI2V 5B (dim 3072)" in compat.reason


def test_info_without_per_block_counts_is_estimated(tmp_path, config):
    """An info from before the per-block counts existed still gets the right level."""
    info = inspect_lora(
        write_layout(tmp_path / "b.safetensors", config, "peft", blocks=[0, 1, 2, 3]), hash_file=False
    )
    old = info.model_copy(update={"block_modules": {}, "kind_modules": {}, "top_modules": []})
    compat = check_compat(old, config)
    assert compat.level == "partial" and compat.percent == 50.0
    i2v = inspect_lora(
        write_layout(tmp_path / "i.safetensors", config, "i2v", blocks=[0, 1, 2]), hash_file=False
    )
    old = i2v.model_copy(update={"block_modules": {}, "kind_modules": {}, "top_modules": []})
    compat = check_compat(old, config)
    assert compat.level == "partial" and "blocks 2 do not exist" in compat.reason
