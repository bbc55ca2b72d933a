"""Latents and text embeddings of a dataset, computed once with the loaded pipeline and cached.

Each (item, variant) is encoded once: its frames by the pipeline's VAE (the distribution's
mode, normalised with the VAE's ``latents_mean``/``latents_std`` exactly as the pipeline
normalises), and its I2V condition by the pipeline's own ``prepare_latents`` from the
clip's first frame (4 mask channels + 16 first-frame latent channels, as a render builds
them from a start image). Each distinct caption is encoded once with ``encode_prompt``.
Results are kept on the CPU and in a disk cache (safetensors, keyed by model, file, cut
and variant), so a resumed or repeated run does not encode again. Every item is encoded
while holding the model through ``manager.exclusive()``, so renders can run in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.training.dataset import DatasetItem
from studio.training.frames import Variant, load_frames, source_frames, variants_for

MAX_SEQUENCE_LENGTH = 512  # what WanImageToVideoPipeline.__call__ encodes prompts to


@dataclass
class Example:
    name: str
    variant: str
    bucket: str
    caption: str
    latents: torch.Tensor  # [16, T, h, w] float32, CPU
    condition: torch.Tensor  # [20, T, h, w] float32, CPU


@dataclass
class Encoded:
    examples: list[Example] = field(default_factory=list)
    text: dict[str, torch.Tensor] = field(default_factory=dict)  # caption -> [L, D] float32, CPU

    def buckets(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, example in enumerate(self.examples):
            out.setdefault(example.bucket, []).append(i)
        return dict(sorted(out.items()))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception:  # a missing or damaged cache entry is simply computed again
        return None


def _store(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Best effort (a cache): written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _model_key(pipe, model_name: str) -> str:
    return _key(model_name, dict(pipe.vae.config), dict(pipe.text_encoder.config.to_dict()))


def _normalise(pipe, z: torch.Tensor) -> torch.Tensor:
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
    return (z - mean) * inv_std


@torch.no_grad()
def encode_clip(pipe, frames, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, I2V condition) of a clip given as RGB images at ``width``×``height``."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    device = pipe._execution_device
    vae_device = get_module_execution_device(vae)
    video = pipe.video_processor.preprocess_video(frames, height=height, width=width)
    z = retrieve_latents(vae.encode(video.to(vae_device, vae.dtype)), sample_mode="argmax")
    latents = _normalise(pipe, z.to(device=device, dtype=torch.float32))
    image = pipe.video_processor.preprocess(frames[0], height=height, width=width).to(device, torch.float32)
    _, condition = pipe.prepare_latents(
        image,
        1,
        vae.config.z_dim,
        height,
        width,
        len(frames),
        torch.float32,
        device,
        None,
        torch.zeros_like(latents),
    )
    pipe.maybe_free_model_hooks()
    return latents[0].float().cpu(), condition[0].float().cpu()


@torch.no_grad()
def encode_text(pipe, caption: str) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(
        prompt=caption,
        do_classifier_free_guidance=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        device=pipe._execution_device,
    )
    pipe.maybe_free_model_hooks()
    return embeds[0].float().cpu()


def encode_items(
    manager,
    items: list[DatasetItem],
    *,
    cache_dir: Path,
    model_name: str,
    hflip: bool = False,
    random_crop: bool = False,
    crops: int = 1,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Encoded:
    """Encode every item (and its augmented variants) and every caption, from the cache when there."""
    encoded = Encoded()
    with manager.exclusive() as pipe:
        model_key = _model_key(pipe, model_name)
    for number, item in enumerate(items, start=1):
        if stop is not None and stop():
            break
        if progress is not None:
            progress(number, len(items), item.name)
        variants = variants_for(item, hflip=hflip, random_crop=random_crop, crops=crops, seed=seed)
        encoded.examples.extend(_encode_item(manager, item, variants, cache_dir, model_key))
        if item.caption not in encoded.text:
            path = cache_dir / "text" / f"{_key(model_key, item.caption, MAX_SEQUENCE_LENGTH)}.safetensors"
            cached = _load(path)
            if cached is None:
                with manager.exclusive() as pipe:
                    cached = {"text": encode_text(pipe, item.caption)}
                _store(path, cached)
            encoded.text[item.caption] = cached["text"]
    return encoded


def _encode_item(
    manager, item: DatasetItem, variants: list[Variant], cache_dir: Path, model_key: str
) -> list[Example]:
    assert item.cut is not None and item.caption is not None
    examples, raw = [], None
    for variant in variants:
        key = _key(model_key, item.path, item.size_bytes, item.mtime_ns, item.cut.model_dump(), variant.label)
        path = cache_dir / "latents" / f"{key}.safetensors"
        cached = _load(path)
        if cached is None:
            raw = raw if raw is not None else source_frames(item)
            frames = load_frames(item, variant, raw)
            with manager.exclusive() as pipe:
                latents, condition = encode_clip(pipe, frames, item.cut.width, item.cut.height)
            cached = {"latents": latents, "condition": condition}
            _store(path, cached)
        examples.append(
            Example(
                name=item.name,
                variant=variant.label,
                bucket=item.cut.bucket,
                caption=item.caption,
                latents=cached["latents"],
                condition=cached["condition"],
            )
        )
    return examples
