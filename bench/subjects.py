"""The benchmark subjects, built in code with random weights (nothing is downloaded).

- ``demo``: the studio's offline demo pipeline (:mod:`studio.models.demo`).
- ``block-true``: a Wan2.2 I2V pipeline whose two experts have the exact Wan2.2 A14B
  block shape (dim 5120, 40 heads × 128, ffn 13824, in_channels 36) but only
  ``BLOCK_TRUE_LAYERS`` layers, so it fits a CPU run (about 1.9 GB per layer per expert
  in float32 with its embedders).
- ``wan1.3b``: the Wan2.1 1.3B block shape (dim 1536, 12 heads, ffn 8960) with
  ``WAN13_LAYERS`` layers, one expert.

Both reuse the demo's tiny VAE, UMT5 text encoder and tokenizer (``text_dim`` 32 matches
the demo text encoder), so they are real ``WanImageToVideoPipeline`` folders that the
studio's :class:`~studio.engine.manager.PipelineManager` loads with ``from_pretrained``.
Folders and LoRA files are built once and kept under the bench cache
(``$BENCH_CACHE``, default ``.studio-cache/bench``, which git ignores).

LoRA files are written in the original/ComfyUI layout (``diffusion_model.blocks.N.self_attn.q.lora_A.weight``)
and cover self-attention, cross-attention and the FFN of every block.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.loras.synthetic import WAN_1_3B_CONFIG, WAN_14B_CONFIG, make_lora_tensors, write_lora
from studio.models.demo import TRANSFORMER_CONFIG as DEMO_TRANSFORMER_CONFIG

SUBJECTS_VERSION = 1
TEXT_DIM = DEMO_TRANSFORMER_CONFIG["text_dim"]  # the demo text encoder's d_model
BLOCK_TRUE_LAYERS = int(os.environ.get("BENCH_BLOCK_TRUE_LAYERS", "2"))
WAN13_LAYERS = int(os.environ.get("BENCH_WAN13_LAYERS", "8"))
# Token count of the block-true forward: latent 4 × 32 × 32 → 4 · 16 · 16 = 1,024 tokens.
LATENT = (4, 32, 32)
TEXT_TOKENS = 512  # what the pipeline feeds (max_sequence_length)
LORA_SCALE = 0.01  # random factors this size keep every activation in a sane range

WAN22_A14B_CONFIG: dict[str, Any] = dict(WAN_14B_CONFIG)
BLOCK_TRUE_CONFIG: dict[str, Any] = dict(WAN22_A14B_CONFIG, num_layers=BLOCK_TRUE_LAYERS, text_dim=TEXT_DIM)
WAN13_CONFIG: dict[str, Any] = dict(
    WAN_1_3B_CONFIG, num_layers=WAN13_LAYERS, in_channels=36, text_dim=TEXT_DIM
)


@dataclass(frozen=True)
class Subject:
    name: str
    label: str
    config: dict[str, Any]
    experts: int

    @property
    def dim(self) -> int:
        return int(self.config["num_attention_heads"]) * int(self.config["attention_head_dim"])


BLOCK_TRUE = Subject(
    "block-true",
    f"Wan2.2 A14B block shape, {BLOCK_TRUE_LAYERS} layers (dim 5120, ffn 13824)",
    BLOCK_TRUE_CONFIG,
    2,
)
WAN13 = Subject("wan1.3b", f"Wan2.1 1.3B shape, {WAN13_LAYERS} layers (dim 1536, ffn 8960)", WAN13_CONFIG, 1)
SUBJECTS = {s.name: s for s in (BLOCK_TRUE, WAN13)}


def cache_root() -> Path:
    root = Path(os.environ.get("BENCH_CACHE") or Path(".studio-cache") / "bench")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _key(config: dict[str, Any]) -> str:
    import hashlib

    text = json.dumps(config, sort_keys=True, default=str) + f"|v{SUBJECTS_VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def random_transformer(config: dict[str, Any], *, seed: int = 0, dtype=torch.float32, device="cpu"):
    """A ``WanTransformer3DModel`` with ``config`` and random weights, made without a slow default init.

    Built on the meta device, cast there, then given memory and :func:`randomize_`d.
    Modules diffusers keeps in float32 (``_keep_in_fp32_modules``) stay float32.
    """
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    model = on_device(model, dtype=dtype, device=device, seed=seed)
    # The only buffers (rotary tables, not saved) were made on meta: build them again on the device.
    model.rope = type(model.rope)(
        model.rope.attention_head_dim, model.rope.patch_size, model.rope.max_seq_len
    ).to(device)
    return model.eval()


def on_device(model, *, dtype=torch.float32, device="cpu", seed: int = 0):
    """A model built on ``meta``, cast to ``dtype`` there (free), given memory on ``device`` and randomized.

    Modules listed in ``_keep_in_fp32_modules`` stay float32, as ``from_pretrained`` leaves them.
    """
    if dtype != torch.float32:  # cast on meta, so the device never holds a float32 copy
        keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, param in model.named_parameters():
            if not any(part in keep for part in name.split(".")):
                param.data = param.data.to(dtype)
    model = model.to_empty(device=device)
    randomize_(model, seed=seed)
    return model


@torch.no_grad()
def randomize_(model, *, seed: int = 0) -> None:
    """Random weights in place: matrices and kernels uniform in ±1/sqrt(fan_in) (PyTorch's default scale),
    norm weights ones, other vectors small. The values are slices of one random pool at random
    offsets (drawing billions of fresh numbers on a CPU would take longer than the benchmark).
    """
    params = list(model.parameters())
    if not params:
        return
    device = params[0].device
    gen = torch.Generator(device=device).manual_seed(seed)
    pick = torch.Generator().manual_seed(seed + 1)
    pool = torch.empty(1 << 22, device=device).uniform_(-1.0, 1.0, generator=gen)
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            bound = 1.0 / max(1, param[0].numel()) ** 0.5
            _fill(param, pool, pick)
            param.mul_(bound)
        elif "norm" in name or name.endswith("gamma"):
            param.fill_(1.0)
        else:
            _fill(param, pool, pick)
            param.mul_(0.02)


def _fill(param: torch.Tensor, pool: torch.Tensor, pick: torch.Generator) -> None:
    flat = param.view(-1)
    n, size = flat.numel(), pool.numel()
    for start in range(0, n, size):
        k = min(size, n - start)
        offset = int(torch.randint(0, size - k + 1, (1,), generator=pick))
        flat[start : start + k].copy_(pool[offset : offset + k])


def build_pipeline_folder(subject: Subject) -> Path:
    """Build (once) and save ``subject`` as a diffusers ``WanImageToVideoPipeline`` folder; return it."""
    folder = cache_root() / f"{subject.name}-{_key(subject.config)}"
    marker = folder / "bench_subject.json"
    if marker.exists():
        return folder
    from diffusers import WanImageToVideoPipeline

    from studio.models.demo import build_demo_pipeline

    demo = build_demo_pipeline()
    transformers = [random_transformer(subject.config, seed=i) for i in range(subject.experts)]
    pipe = WanImageToVideoPipeline(
        tokenizer=demo.tokenizer,
        text_encoder=demo.text_encoder,
        vae=demo.vae,
        scheduler=demo.scheduler,
        transformer=transformers[0],
        transformer_2=transformers[1] if subject.experts == 2 else None,
        image_encoder=None,
        image_processor=None,
        boundary_ratio=0.875 if subject.experts == 2 else None,
    )
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root()))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "bench_subject.json").write_text(json.dumps({"subject": subject.name, **subject.config}))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def lora_file(subject: Subject, rank: int, *, seed: int = 0, layout: str = "original") -> Path:
    """A rank-``rank`` LoRA fitting ``subject`` (attention + FFN of every block), written once."""
    folder = cache_root() / "loras"
    path = folder / f"{subject.name}-{_key(subject.config)}-r{rank}-s{seed}-{layout}.safetensors"
    if not path.exists():
        tensors = make_lora_tensors(subject.config, rank=rank, layout=layout, seed=seed, scale=LORA_SCALE)
        tmp = path.with_suffix(".tmp.safetensors")
        write_lora(tmp, tensors)
        os.replace(tmp, path)
    return path


def forward_inputs(
    config: dict[str, Any],
    *,
    latent: tuple[int, int, int] = LATENT,
    text_tokens: int = TEXT_TOKENS,
    seed: int = 0,
    dtype=torch.float32,
    device="cpu",
) -> dict[str, Any]:
    """Random inputs of one denoising step: latents ``[1, in_channels, T, H, W]``, a timestep, text."""
    gen = torch.Generator().manual_seed(seed)
    frames, height, width = latent
    hidden = torch.randn(1, int(config["in_channels"]), frames, height, width, generator=gen)
    text = torch.randn(1, text_tokens, int(config["text_dim"]), generator=gen)
    return {
        "hidden_states": hidden.to(device=device, dtype=dtype),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": text.to(device=device, dtype=dtype),
        "return_dict": False,
    }


def forward_flops(config: dict[str, Any], tokens: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Matmul FLOPs of one forward of the blocks (projections, attention, FFN; embedders ignored).

    Per block: self-attention projections 4·2·L·d², attention scores and values 4·L²·d,
    cross-attention q/o 2·2·L·d² and k/v over the text 2·2·T·d², its attention 4·L·T·d,
    FFN 2·2·L·d·f. Wan2.2 A14B at 480×832×81 (L = 32,760, T = 512): 1.678 PFLOP.
    """
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    f = int(config["ffn_dim"])
    L, T = tokens, text_tokens
    per_block = 8 * L * d * d + 4 * L * L * d + 4 * L * d * d + 4 * T * d * d + 4 * L * T * d + 4 * L * d * f
    return float(per_block * int(config["num_layers"]))


def token_count(config: dict[str, Any], latent: tuple[int, int, int] = LATENT) -> int:
    pt, ph, pw = config.get("patch_size", (1, 2, 2))
    return (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
