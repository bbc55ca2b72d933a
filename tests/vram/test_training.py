"""The training VRAM estimate: saved activations against a real backward graph, LoRA sizes against the
trainer's adapter, and how the figures move with checkpointing, memory mode and size."""

from __future__ import annotations

import pytest
import torch

from studio.errors import ValidationError
from studio.vram.training import estimate_training, saved_activation_bytes

TARGETS = r"^blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))$"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: one thread beats two fighting for a busy CPU
    yield
    torch.set_num_threads(before)


def _saved_bytes(dtype: torch.dtype, *, checkpointing: bool) -> tuple[int, dict]:
    """Bytes of the distinct storages autograd saves in one forward of a small Wan transformer with LoRAs."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=48, in_channels=36,
                  out_channels=16, text_dim=64, freq_dim=256, ffn_dim=768, num_layers=3, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)  # fmt: skip
    model = WanTransformer3DModel(**config).to(dtype)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))
    if checkpointing:
        model.enable_gradient_checkpointing()
    x = torch.randn(1, 36, 3, 24, 24, dtype=dtype)
    text = torch.randn(1, 512, 64, dtype=dtype)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)
    shape = dict(tokens=3 * 12 * 12, dim=192, ffn=768, text_tokens=512, blocks=3)
    return sum(storages.values()), shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_activations_match_a_real_backward_graph(dtype):
    measured, shape = _saved_bytes(dtype, checkpointing=False)
    c = 4 if dtype == torch.float32 else 2
    counted = saved_activation_bytes(**shape, c=c, checkpointing=False)
    assert abs(counted - measured) / measured < 0.15, (counted, measured)


def test_checkpointing_keeps_only_block_inputs():
    measured, shape = _saved_bytes(torch.float32, checkpointing=True)
    full = saved_activation_bytes(**shape, c=4, checkpointing=False)
    counted = saved_activation_bytes(**shape, c=4, checkpointing=True)
    # The forward keeps the block inputs; the estimate adds the one block recomputed during backward.
    block = full / shape["blocks"]
    assert abs((counted - block) - measured) / measured < 0.5, (counted - block, measured)
    assert measured < full / 5


def test_the_lora_is_counted_as_the_trainer_builds_it(demo_model_dir):
    from diffusers import WanTransformer3DModel

    from studio.training import adapter

    model = WanTransformer3DModel.from_pretrained(demo_model_dir / "transformer")
    adapter.attach(model, rank=8, alpha=8, target_regex=TARGETS, generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for _, p in adapter.parameters(model))
    est = estimate_training("demo", width=32, height=32, frames=9, rank=8, mode="gpu", experts=("high",))
    assert est.breakdown["lora_weights"] == params * 4  # float32 master weights
    assert est.breakdown["lora_gradients"] == params * 4
    assert est.breakdown["optimizer_state"] == params * 4 * 2
    both = estimate_training("demo", width=32, height=32, frames=9, rank=8, mode="gpu")
    assert both.breakdown["optimizer_state"] == 2 * est.breakdown["optimizer_state"]


def test_a14b_figures_move_the_right_way():
    def peak(**kw):
        values = dict(width=832, height=480, frames=33, rank=32)
        values.update(kw)
        return estimate_training("wan2.2-i2v-a14b", **values)

    base = peak()
    assert 28e9 < base.breakdown["expert_weights"] < 29e9  # one bf16 expert with model-offload
    assert 35e9 < base.peak_vram_bytes < 60e9
    no_ckpt = peak(gradient_checkpointing=False)
    assert no_ckpt.peak_vram_bytes > base.peak_vram_bytes + 100e9 and "checkpointing" in " ".join(
        no_ckpt.notes
    )
    assert (
        peak(mode="gpu").peak_vram_bytes > base.peak_vram_bytes + 28e9
    )  # both experts, the text encoder, the VAE
    assert peak(frames=81).peak_vram_bytes > base.peak_vram_bytes
    assert peak(rank=64).breakdown["optimizer_state"] == 2 * base.breakdown["optimizer_state"]
    assert peak(precision="fp8").breakdown["expert_weights"] < 15e9
    assert base.fits(80 * 2**30) == "fits" and no_ckpt.fits(80 * 2**30) == "won't fit"
    with pytest.raises(ValidationError, match="gpu or model-offload"):
        peak(mode="group-offload")
