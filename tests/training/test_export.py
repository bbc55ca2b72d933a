"""The exported pair: original/ComfyUI layout with metadata, a compatible pair in the library, loadable by
diffusers' own ``load_lora_weights`` and by the studio, and a render with it lands nearer the clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studio.loras.compat import check_compat
from studio.loras.library import LoraLibrary
from studio.loras.safetensors_io import read_header

pytestmark = pytest.mark.slow  # uses the shared trained run

BLOCK_MODULES = {
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2",
}  # fmt: skip


def pair(trained) -> tuple[Path, Path]:
    high, low = (Path(f) for f in trained.result.files)
    return high, low


def test_the_pair_is_named_and_laid_out_like_comfyui_loras(trained, train_settings):
    high, low = pair(trained)
    assert high.name == "wave_high_noise.safetensors" and low.name == "wave_low_noise.safetensors"
    assert high.parent == train_settings.resolved_lora_dirs()[0]
    header = read_header(high)
    modules = {
        k.removeprefix("diffusion_model.").rsplit(".", 2)[0] for k in header.tensors if k.endswith("weight")
    }
    assert {m.split(".", 2)[2] for m in modules} == BLOCK_MODULES
    assert {int(m.split(".")[1]) for m in modules} == {0, 1}  # both blocks of the demo model
    for module in modules:
        down = header.tensors[f"diffusion_model.{module}.lora_down.weight"]
        up = header.tensors[f"diffusion_model.{module}.lora_up.weight"]
        assert down.shape[0] == 8 and up.shape[1] == 8  # rank 8
        assert f"diffusion_model.{module}.alpha" in header.tensors
    assert all(k.startswith("diffusion_model.") for k in header.tensors)


def test_the_header_says_what_the_file_is(trained):
    high, low = pair(trained)
    for path, expert, lo, hi in ((high, "high", "875", "1000"), (low, "low", "0", "875")):
        meta = read_header(path).metadata
        assert meta["studio.expert"] == expert
        assert meta["studio.base_model"] == "demo" and meta["studio.boundary"] == "0.875"
        assert meta["studio.rank"] == "8" and meta["studio.alpha"] == "8" and meta["studio.steps"] == "40"
        assert meta["studio.dataset_size"] == "2" and meta["studio.version"]
        assert (meta["ss_min_timestep"], meta["ss_max_timestep"]) == (lo, hi)


def test_the_library_shows_a_compatible_pair(trained, train_settings, demo_transformer_config):
    library = LoraLibrary(train_settings.resolved_lora_dirs(), train_settings.cache_dir)
    items = [
        i
        for i in library.refresh()
        if "wave" in i.label and "resume" not in i.label and "busy" not in i.label
    ]
    assert len(items) == 1, [i.label for i in library.items]
    item = items[0]
    assert item.kind == "pair"
    assert Path(item.high_path).name == "wave_high_noise.safetensors"
    assert Path(item.low_path).name == "wave_low_noise.safetensors"
    for info in item.infos:
        badge = check_compat(info, demo_transformer_config, model_name="the demo model")
        assert badge.level == "compatible" and badge.percent == 100.0, badge
    # The run's checkpoints live in a hidden folder of the LoRA folder: not listed.
    assert not any(".training" in p for i in library.items for p in i.paths)


def _effective_delta(layer, adapter: str) -> torch.Tensor:
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return layer.scaling[adapter] * (b.float() @ a.float())


def test_diffusers_load_lora_weights_loads_exactly_the_file(trained, demo_model_dir):
    from diffusers import WanImageToVideoPipeline
    from peft.tuners.lora.layer import LoraLayer
    from safetensors.torch import load_file

    high, low = pair(trained)
    pipe = WanImageToVideoPipeline.from_pretrained(demo_model_dir, dtype=torch.float32)
    pipe.load_lora_weights(str(high), adapter_name="mine", use_safetensors=True)
    pipe.load_lora_weights(str(low), adapter_name="mine", use_safetensors=True, load_into_transformer_2=True)
    for path, model in ((high, pipe.transformer), (low, pipe.transformer_2)):
        tensors = load_file(path)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
        assert len(layers) == 20  # 10 modules × 2 blocks, every one of them
        for module, layer in layers.items():
            from studio.loras.keys import diffusers_to_original

            original = f"diffusion_model.{diffusers_to_original(module)}"
            down, up = tensors[f"{original}.lora_down.weight"], tensors[f"{original}.lora_up.weight"]
            alpha = float(tensors[f"{original}.alpha"])
            expected = alpha / down.shape[0] * (up @ down)
            assert torch.allclose(_effective_delta(layer, "mine"), expected, atol=1e-6), module


def _clip_latents(manager, dataset: Path) -> torch.Tensor:
    from studio.training.dataset import check_dataset
    from studio.training.encode import encode_clip
    from studio.training.frames import Variant, load_frames

    item = next(
        i for i in check_dataset(dataset, frames=9, width=32, height=32, fps=8).usable if i.kind == "video"
    )
    frames = load_frames(item, Variant())
    with manager.exclusive() as pipe:
        latents, _ = encode_clip(pipe, frames, 32, 32)
    return latents, frames[0], item.caption


def test_a_render_with_the_pair_lands_nearer_the_training_clip(trained, train_manager, train_dataset):
    from studio.engine.manager import RenderRequest
    from studio.stack.schema import RenderSettings, Stack, StackEntry

    target, first_frame, caption = _clip_latents(train_manager, train_dataset)
    settings = RenderSettings(prompt=caption, width=32, height=32, frames=9, steps=8, guidance=1.0, seed=11)
    high, low = pair(trained)

    def render(stack):
        request = RenderRequest(image=first_frame, settings=settings, stack=stack, decode=False)
        return train_manager.render(request).latents[0]

    base = render(Stack())
    with_pair = render(Stack(entries=[StackEntry.pair(high, low, name="wave")]))
    base_error = torch.mean((base - target) ** 2).item()
    pair_error = torch.mean((with_pair - target) ** 2).item()
    assert pair_error < 0.9 * base_error, (pair_error, base_error)
    # The studio loaded every module of both files.
    for path in (high, low):
        report = train_manager.reports[path.resolve()]
        assert report.complete and report.percent == 100.0, report
    print(json.dumps({"render_mse_base": base_error, "render_mse_trained": pair_error}))
