"""Memory modes on the demo model: fp8 storage with LoRAs, CUDA-only modes refused on CPU, VAE tiling."""

from __future__ import annotations

import pytest
import torch

from studio.engine.manager import PipelineManager, RenderRequest
from studio.engine.memory import MemoryConfig, fuse_refusal
from studio.errors import ValidationError
from studio.stack.schema import RenderSettings, Stack, StackEntry

SETTINGS = RenderSettings(prompt="a cat", width=32, height=32, frames=5, steps=4, guidance=1.0, seed=5)


def latents(manager, image, stack=None, **kw):
    return manager.render(
        RenderRequest(image=image, settings=SETTINGS, stack=stack or Stack(), decode=False, **kw)
    ).latents


def test_fp8_storage_renders_with_loras_that_stay_in_compute_precision(settings, start_image, make_lora):
    path = make_lora(scale=0.3)
    bf16 = PipelineManager(settings, device="cpu")
    bf16.load_model("demo")
    reference = latents(bf16, start_image, Stack(entries=[StackEntry.single(path)]))

    fp8 = PipelineManager(settings, device="cpu", memory=MemoryConfig(precision="fp8"))
    fp8.load_model("demo")
    assert fp8.pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    base = latents(fp8, start_image)
    with_lora = latents(fp8, start_image, Stack(entries=[StackEntry.single(path)]))
    lora_a = fp8.pipe.transformer.blocks[0].attn1.to_q.lora_A
    assert all(layer.weight.dtype == torch.float32 for layer in lora_a.values())
    assert not torch.allclose(base, with_lora)
    # fp8 storage rounds the base weights, so compare loosely with the full-precision render
    assert torch.nn.functional.cosine_similarity(with_lora.flatten(), reference.flatten(), dim=0) > 0.95
    with pytest.raises(ValidationError, match="cannot be fused into fp8"):
        latents(fp8, start_image, Stack(entries=[StackEntry.single(path)]), fuse=True)


@pytest.mark.parametrize("mode", ["gpu", "model-offload", "group-offload", "sequential"])
def test_cuda_modes_say_they_need_a_gpu_on_cpu(settings, mode):
    manager = PipelineManager(settings, device="cpu")
    manager.load_model("demo")
    with pytest.raises(ValidationError, match=f"'{mode}' needs an NVIDIA GPU"):
        manager.configure_memory(MemoryConfig(mode=mode))
    assert manager.memory == MemoryConfig() and manager.model_loads == 1


def test_vae_tiling_changes_without_a_reload_and_precision_with_one(settings, start_image, make_lora):
    manager = PipelineManager(settings, device="cpu")
    manager.load_model("demo")
    path = make_lora()
    stack = Stack(entries=[StackEntry.single(path)])
    first = latents(manager, start_image, stack)
    assert manager.configure_memory(MemoryConfig(vae_tiling=True)) is False
    assert manager.pipe.vae.use_tiling and manager.model_loads == 1
    result = manager.render(RenderRequest(image=start_image, settings=SETTINGS, stack=stack))
    assert result.frames.shape == (5, 32, 32, 3)
    assert manager.configure_memory(MemoryConfig(precision="fp8")) is True
    assert manager.model_loads == 2 and manager.loaded_adapters() == {}
    again = latents(manager, start_image, stack)  # the stack is loaded again into the new model
    assert (
        manager.loaded_adapters()
        and torch.nn.functional.cosine_similarity(again.flatten(), first.flatten(), dim=0) > 0.95
    )


def test_fp8_storage_computes_in_the_dtype_the_model_was_loaded_in(settings, start_image, make_lora):
    fp8 = PipelineManager(
        settings.with_(dtype="bfloat16"), device="cpu", memory=MemoryConfig(precision="fp8")
    )
    fp8.load_model("demo")
    with_lora = latents(fp8, start_image, Stack(entries=[StackEntry.single(make_lora(scale=0.3))]))
    lora_a = fp8.pipe.transformer.blocks[0].attn1.to_q.lora_A
    assert all(layer.weight.dtype == torch.bfloat16 for layer in lora_a.values())
    assert torch.isfinite(with_lora).all() and not fp8._fused  # never fused automatically


def test_fusing_is_refused_where_it_cannot_be_exact():
    assert fuse_refusal(MemoryConfig()) is None and fuse_refusal(MemoryConfig(mode="group-offload")) is None
    assert "fp8" in fuse_refusal(MemoryConfig(precision="fp8"))
    assert "sequential offload" in fuse_refusal(MemoryConfig(mode="sequential"))
