"""The architecture of each model the studio knows, and the exact size of its weights.

The configs below are the real ones of the published diffusers repos
(``Wan-AI/Wan2.2-I2V-A14B-Diffusers``, ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``) and of the
offline demo model (:mod:`studio.models.demo`). Weights are never guessed: each
component is built on the ``meta`` device from its config (exact and cheap: no
memory is allocated, A14B takes ~70 ms) and its parameters are summed with the dtype
each one really has once loaded:

* ``bf16``: diffusers' ``from_pretrained(dtype=bfloat16)`` keeps the parameters whose
  dotted name contains one of the model's ``_keep_in_fp32_modules`` in float32 (Wan:
  ``time_embedder``, ``scale_shift_table``, ``norm1/2/3``...); the rest is bf16.
  transformers' UMT5 keeps nothing in fp32 for bf16 (its ``wo`` rule is fp16-only).
* ``fp8``: ``enable_layerwise_casting(storage_dtype=float8_e4m3fn)`` stores the weights
  of the supported layers (Linear, Conv, Embedding) in one byte, skipping the modules
  whose name matches the skip patterns (``patch_embedding``, ``condition_embedder``,
  norms, ``proj_out``, the fp32-kept modules); everything else stays as in ``bf16``.
* ``fp32``: every floating tensor in four bytes (the demo model; the reference Wan code
  keeps its VAE in fp32).

For group offloading and sequential offloading the estimator also needs the size of
one transformer block, of everything outside the blocks, and of the largest leaf
module: :class:`ComponentWeights` carries those too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

# "fp8" is fp8 storage over a bf16 model, "fp8/fp32" fp8 storage over a float32 model (the demo).
PRECISIONS = ("bf16", "fp8", "fp32", "fp8/fp32")

# ---------------------------------------------------------------------------
# Configs (constructor arguments)
# ---------------------------------------------------------------------------

A14B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=36,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)

TI2V_5B_TRANSFORMER: dict[str, Any] = dict(
    A14B_TRANSFORMER,
    num_attention_heads=24,
    ffn_dim=14336,
    num_layers=30,
    in_channels=48,
    out_channels=48,
)

# UMT5-XXL, the text encoder of every Wan2.1/2.2 model (transformers ``UMT5Config``).
UMT5_XXL: dict[str, Any] = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)

# The Wan2.1 VAE (used by A14B): 8x spatial, 4x temporal, 16 latent channels.
WAN21_VAE: dict[str, Any] = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)

# The Wan2.2 VAE (used by TI2V-5B): 16x spatial (a 2x2 patchify + 8x), 48 latent channels.
WAN22_VAE: dict[str, Any] = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
)

TEXT_LEN = 512  # the pipelines pad every prompt to 512 tokens


def _demo_text_encoder() -> dict[str, Any]:
    from studio.models import demo as demo_model

    return dict(demo_model.TEXT_ENCODER_CONFIG)


@dataclass(frozen=True)
class ModelShapes:
    """What the estimator needs to know about one model's architecture."""

    name: str
    transformer: dict[str, Any]
    experts: int
    text_encoder: dict[str, Any]
    vae: dict[str, Any]
    vae_spatial: int  # pixels per latent cell (8, or 16 for the Wan2.2 VAE)
    vae_temporal: int = 4
    expand_timesteps: bool = False  # TI2V-5B: a timestep per token (per-token modulation)
    weights_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    text_len: int = TEXT_LEN
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.transformer["num_attention_heads"]) * int(self.transformer["attention_head_dim"])

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.transformer.get("patch_size", (1, 2, 2)))  # type: ignore[return-value]

    @property
    def latent_channels(self) -> int:
        return int(self.vae.get("z_dim", 16))

    @property
    def size_multiple(self) -> int:
        return self.vae_spatial * self.patch[1]

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.vae_temporal + 1

    def tokens(self, width: int, height: int, frames: int) -> int:
        """L = T'·(H/(s·p))·(W/(s·p)): 480×832×81 on A14B → 32,760."""
        _, ph, pw = self.patch
        return (
            self.latent_frames(frames)
            * (height // (self.vae_spatial * ph))
            * (width // (self.vae_spatial * pw))
        )


A14B = ModelShapes(
    name="wan2.2-i2v-a14b",
    transformer=A14B_TRANSFORMER,
    experts=2,
    text_encoder=UMT5_XXL,
    vae=WAN21_VAE,
    vae_spatial=8,
)
TI2V_5B = ModelShapes(
    name="wan2.2-ti2v-5b",
    transformer=TI2V_5B_TRANSFORMER,
    experts=1,
    text_encoder=UMT5_XXL,
    vae=WAN22_VAE,
    vae_spatial=16,
    expand_timesteps=True,
)


def demo_shapes() -> ModelShapes:
    from studio.models import demo as demo_model

    return ModelShapes(
        name="demo",
        transformer=dict(demo_model.TRANSFORMER_CONFIG),
        experts=2,
        text_encoder=_demo_text_encoder(),
        vae=dict(demo_model.VAE_CONFIG),
        vae_spatial=8,
        weights_dtype="float32",
    )


def shapes_for(model: Any) -> ModelShapes:
    """The shapes of a registry name, a :class:`studio.models.registry.ModelSpec`, or a ModelShapes.

    A spec that points at a local diffusers folder uses the configs found there
    (``transformer/config.json``, ``vae/config.json``, ``text_encoder/config.json``).
    """
    if isinstance(model, ModelShapes):
        return model
    if isinstance(model, str):
        from studio.models.registry import resolve_model

        model = resolve_model(model)
    if getattr(model, "is_demo", False):
        base = demo_shapes()
    elif getattr(model, "experts", 2) == 2:
        base = A14B
    else:
        base = TI2V_5B
    folder = getattr(model, "folder", None)
    if folder is not None and not getattr(model, "is_demo", False):
        base = _from_folder(Path(folder), base)
    return base if base.name == model.name else _replace_name(base, model.name)


def _replace_name(shapes: ModelShapes, name: str) -> ModelShapes:
    return replace(shapes, name=name)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if not k.startswith("_")} if isinstance(data, dict) else None


def _from_folder(folder: Path, base: ModelShapes) -> ModelShapes:
    transformer = _read_config(folder / "transformer" / "config.json") or base.transformer
    vae = _read_config(folder / "vae" / "config.json") or base.vae
    text = _read_config(folder / "text_encoder" / "config.json") or base.text_encoder
    index = _read_config(folder / "model_index.json") or {}
    spatial = int(vae.get("scale_factor_spatial") or 8)
    return replace(
        base,
        transformer=transformer,
        vae=vae,
        text_encoder={k: v for k, v in text.items() if k in _UMT5_KEYS} or base.text_encoder,
        vae_spatial=spatial,
        expand_timesteps=bool(index.get("expand_timesteps", base.expand_timesteps)),
    )


_UMT5_KEYS = set(UMT5_XXL) | {"dense_act_fn", "is_gated_act", "layer_norm_epsilon", "d_model"}

# ---------------------------------------------------------------------------
# Weights, from real modules built on the meta device
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentWeights:
    """Sizes of one component, in bytes, for each storage precision."""

    params: int
    total: dict[str, int]  # storage (see PRECISIONS) -> bytes of all parameters and buffers
    block: dict[str, int]  # one repeated block (group offload unit); 0 when there are none
    blocks: int  # how many repeated blocks
    largest_leaf: dict[str, int]  # the biggest leaf module (sequential offload unit)
    largest_linear: tuple[int, int]  # (in, out) of the biggest nn.Linear stored in fp8 by layerwise casting

    def bytes(self, precision: str) -> int:
        return self.total[precision]

    def outside_blocks(self, precision: str) -> int:
        return self.total[precision] - self.blocks * self.block[precision]


def _freeze(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True)


def _thaw(frozen: str) -> dict[str, Any]:
    out = json.loads(frozen)
    if isinstance(out.get("patch_size"), list):
        out["patch_size"] = tuple(out["patch_size"])
    return out


def transformer_weights(config: Mapping[str, Any]) -> ComponentWeights:
    return _transformer_weights(_freeze(config))


def text_encoder_weights(config: Mapping[str, Any]) -> ComponentWeights:
    return _text_encoder_weights(_freeze(config))


def vae_weights(config: Mapping[str, Any]) -> ComponentWeights:
    return _vae_weights(_freeze(config))


@lru_cache(maxsize=32)
def _transformer_weights(frozen: str) -> ComponentWeights:
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(_thaw(frozen))
    return _measure(model, blocks=list(model.blocks), diffusers_model=True)


@lru_cache(maxsize=8)
def _text_encoder_weights(frozen: str) -> ComponentWeights:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**_thaw(frozen)))
    # Group offloading treats the whole T5 stack as one unmatched module (it is not a
    # ModuleList child of the model), so there are no offload blocks here.
    return _measure(model, blocks=[], diffusers_model=False)


@lru_cache(maxsize=8)
def _vae_weights(frozen: str) -> ComponentWeights:
    import torch
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan.from_config(_thaw(frozen))
    return _measure(model, blocks=[], diffusers_model=True)


def _keep_fp32(model) -> tuple[str, ...]:
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    # transformers applies its list only for fp16 (``_keep_in_fp32_modules_strict`` for bf16 too)
    if not hasattr(model, "_skip_layerwise_casting_patterns"):
        keep = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    return tuple(keep)


def _skip_patterns(model) -> tuple[str, ...]:
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN)
    patterns += tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns += tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    return patterns


def _fp8_tensors(model, skip: tuple[str, ...]) -> set[int]:
    """ids of the tensors that layerwise casting stores in fp8 (diffusers' own walk)."""
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    cast: set[int] = set()

    def walk(module, prefix: str) -> None:
        if prefix and any(re.search(p, prefix) for p in skip):
            return
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            cast.update(id(t) for t in module.parameters())
            cast.update(id(t) for t in module.buffers() if t.is_floating_point())
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return cast


def _measure(model, *, blocks: list, diffusers_model: bool) -> ComponentWeights:
    import torch

    keep = _keep_fp32(model)
    fp8 = _fp8_tensors(model, _skip_patterns(model)) if diffusers_model else set()

    def sizes(tensors) -> dict[str, int]:
        out = dict.fromkeys(PRECISIONS, 0)
        for name, t in tensors:
            n = t.numel()
            floating = t.is_floating_point()
            kept = any(k in name.split(".") for k in keep)
            init = t.element_size()
            bf16 = (4 if kept else 2) if floating else init
            fp32 = 4 if floating else init
            out["bf16"] += n * bf16
            out["fp32"] += n * fp32
            out["fp8"] += n * (1 if id(t) in fp8 else bf16)
            out["fp8/fp32"] += n * (1 if id(t) in fp8 else fp32)
        return out

    def named(module):
        seen: set[int] = set()
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t

    total = sizes(named(model))
    block = sizes(named(blocks[0])) if blocks else dict.fromkeys(PRECISIONS, 0)
    largest = dict.fromkeys(PRECISIONS, 0)
    largest_linear = (0, 0)
    for prefix, module in model.named_modules():
        own = [(f"{prefix}.{n}", t) for n, t in module.named_parameters(recurse=False)]
        if not own:
            continue
        s = sizes(own)
        for p in PRECISIONS:
            largest[p] = max(largest[p], s[p])
        cast = isinstance(module, torch.nn.Linear) and id(module.weight) in fp8
        if cast and module.in_features * module.out_features > largest_linear[0] * largest_linear[1]:
            largest_linear = (module.in_features, module.out_features)
    params = sum(p.numel() for p in model.parameters())
    return ComponentWeights(
        params=params,
        total=total,
        block=block,
        blocks=len(blocks),
        largest_leaf=largest,
        largest_linear=largest_linear,
    )
