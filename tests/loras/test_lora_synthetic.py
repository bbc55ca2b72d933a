"""The synthetic LoRA generator: every layout, any config, memory-sane big shapes."""

from __future__ import annotations

import pytest
import torch

from studio.loras.inspect import inspect_lora
from studio.loras.synthetic import (
    ALL_MODULES,
    LAYOUTS,
    WAN_14B_CONFIG,
    factorization,
    make_lora_tensors,
    module_shapes,
    top_level_shapes,
    write_layout,
)


def test_module_shapes_keep_their_old_contract(config):
    shapes = module_shapes(config)
    assert set(shapes) == set(ALL_MODULES)
    assert (
        shapes["attn1.to_q"] == (24, 24)
        and shapes["ffn.net.0.proj"] == (24, 32)
        and shapes["ffn.net.2"] == (32, 24)
    )
    assert module_shapes(config, image_attention=True)["attn2.add_k_proj"] == (24, 24)
    assert top_level_shapes(config)["proj_out"] == (24, 64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_is_written_and_recognised(tmp_path, config, layout):
    path = write_layout(tmp_path / f"{layout}.safetensors", config, layout, dtype=torch.bfloat16)
    info = inspect_lora(path, hash_file=False)
    assert info.layout != "unknown" and info.model_dim == 24
    assert info.dtypes == ["BF16"]


def test_big_shapes_are_built_per_module():
    tensors = make_lora_tensors(WAN_14B_CONFIG, layout="original", rank=8, blocks=[0], dtype=torch.bfloat16)
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_A.weight"].shape == (8, 5120)
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_B.weight"].shape == (13824, 8)
    assert sum(t.numel() for t in tensors.values()) < 2_000_000  # factors only, never a dim × dim delta
    lokr = make_lora_tensors(WAN_14B_CONFIG, layout="lokr", rank=4, blocks=[0], modules=["attn1.to_q"])
    assert lokr["lycoris_blocks_0_self_attn_q.lokr_w1"].shape == (64, 64)
    assert lokr["lycoris_blocks_0_self_attn_q.lokr_w2_a"].shape == (80, 4)


def test_factorization_like_lycoris():
    assert factorization(24) == (4, 6)
    assert factorization(5120) == (64, 80)
    assert factorization(32, 4) == (4, 8)


def test_unknown_layout_is_an_error(config):
    with pytest.raises(ValueError, match="unknown layout"):
        make_lora_tensors(config, layout="nope")
