"""Synthetic LoRA files that fit a given Wan transformer config.

Used by the tests and the benchmarks: they write real ``.safetensors`` files in the
key layouts that real Wan LoRAs use, with shapes taken from a transformer config
(e.g. the demo model's ``transformer/config.json`` or :data:`WAN_14B_CONFIG`).
Tensors are made one module at a time (never a full ``dim × dim`` delta), so big
shapes (dim 5120) stay within the size of the LoRA itself.

Layouts (``layout=``):

==========================  ==========================================================
``peft``                    ``transformer.blocks.0.attn1.to_q.lora_A.weight``
``original``                ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``
                            (``naming="lora_down"`` for ``lora_down``/``lora_up``;
                            ``.alpha`` when ``alpha`` is given)
``lightx2v``                original + ``lora_down``/``lora_up`` + ``.diff_b`` (all or
                            ``diff_b="some"`` layers) + norm ``.diff`` + ``head.head.diff``
``musubi``                  ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` + ``.alpha``
``no_prefix``               ``blocks.0.self_attn.q.lora_down.weight``
``no_prefix_diffusers``     ``blocks.0.attn1.to_q.lora_A.weight``
``lokr``                    ``lycoris_blocks_0_self_attn_q.lokr_w1`` / ``lokr_w2_a`` / ``lokr_w2_b``
``loha``                    ``lycoris_blocks_0_self_attn_q.hada_w1_a`` … ``hada_w2_b``
``dora``                    original + ``.dora_scale``
``i2v``                     original + Wan2.1 I2V ``cross_attn.k_img`` / ``v_img``
``videox_fun``              ``lora_unet__blocks_0_self_attn_q.lora_down.weight`` + ``.alpha``
                            (VideoX-Fun: a double underscore; attention only by default and
                            ``alpha = rank / 2``, like the Wan2.2 Fun reward LoRAs)
``diffsynth``               ``blocks.0.self_attn.q.lora_A.default.weight`` (DiffSynth-Studio)
``peft_wan``                ``base_model.model.blocks.0.ffn.0.lora_A.weight`` (PEFT save)
``ai_toolkit``              ``diffusion_model.transformer_1.blocks.0.self_attn.q.lora_A.weight``
                            and the same under ``transformer_2`` (both experts in one file;
                            ``experts=("high",)`` writes one half)
``lightx2v_i2v``            lightx2v + the Wan2.1 leftovers of the real Wan2.2 I2V files:
                            ``cross_attn.k_img`` / ``v_img``, ``cross_attn.norm_k_img.diff``,
                            ``img_emb.proj.*`` and a per-block ``diff_m``
==========================  ==========================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from studio.models.shapes import A14B_TRANSFORMER, TI2V_5B_TRANSFORMER

# diffusers module name (inside a block) -> original/ComfyUI module name
ATTN_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
}
FFN_MODULES = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
ALL_MODULES = {**ATTN_MODULES, **FFN_MODULES}
IMAGE_ATTN_MODULES = {"attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img"}
# diffusers top-level module -> original name
TOP_MODULES = {
    "proj_out": "head.head",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
}
NORM_DIFFS = ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k", "norm3")

LAYOUTS = (
    "peft",
    "original",
    "lightx2v",
    "musubi",
    "no_prefix",
    "no_prefix_diffusers",
    "lokr",
    "loha",
    "dora",
    "i2v",
    "videox_fun",
    "diffsynth",
    "peft_wan",
    "ai_toolkit",
    "lightx2v_i2v",
)
# ai-toolkit's prefix for each expert's half of a two-expert file.
AI_TOOLKIT_PREFIXES = {"high": "diffusion_model.transformer_1.", "low": "diffusion_model.transformer_2."}
# Layouts whose keys carry no .alpha (PEFT writes the scale into its config, not the file).
_NO_ALPHA = ("peft", "no_prefix_diffusers", "diffsynth", "peft_wan")

# Wan2.1 1.3B: the same block as A14B at dim 1536 (12 heads), ffn 8960, 30 layers, T2V inputs.
WAN_1_3B_CONFIG = dict(A14B_TRANSFORMER, num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16)
WAN_5B_CONFIG = dict(TI2V_5B_TRANSFORMER)
WAN_14B_CONFIG = dict(A14B_TRANSFORMER)


def _dim(config: Mapping[str, Any]) -> int:
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def module_shapes(config: Mapping[str, Any], *, image_attention: bool = False) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-targetable Linear in one block."""
    dim = _dim(config)
    ffn = int(config["ffn_dim"])
    shapes = {name: (dim, dim) for name in ATTN_MODULES}
    shapes["ffn.net.0.proj"] = (dim, ffn)
    shapes["ffn.net.2"] = (ffn, dim)
    if image_attention:
        shapes.update({name: (dim, dim) for name in IMAGE_ATTN_MODULES})
    return shapes


def top_level_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of the Linears outside the blocks."""
    dim = _dim(config)
    patch = math.prod(config.get("patch_size", (1, 2, 2)))
    return {
        "proj_out": (dim, int(config.get("out_channels", 16)) * patch),
        "condition_embedder.time_proj": (dim, 6 * dim),
        "condition_embedder.text_embedder.linear_1": (int(config.get("text_dim", 4096)), dim),
        "condition_embedder.text_embedder.linear_2": (dim, dim),
        "condition_embedder.time_embedder.linear_1": (int(config.get("freq_dim", 256)), dim),
        "condition_embedder.time_embedder.linear_2": (dim, dim),
    }


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' split of ``dimension`` into ``m × n`` (``m <= n``), as close to square as allowed."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
        length = m + n
    return (m, n) if m <= n else (n, m)


def _original_name(module: str) -> str:
    return {**ALL_MODULES, **IMAGE_ATTN_MODULES, **TOP_MODULES}[module]


def make_lora_tensors(
    config: Mapping[str, Any],
    *,
    rank: int = 4,
    layout: str = "peft",
    modules: Iterable[str] | None = None,
    blocks: Iterable[int] | None = None,
    alpha: float | None = None,
    scale: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    naming: str | None = None,
    image_attention: bool | None = None,
    top_level: Iterable[str] = (),
    diff_b: str | None = None,
    head_diff: bool | None = None,
    head_diff_b: bool = True,
    norm_diffs: bool | None = None,
    lokr_decompose: bool = True,
    lokr_factor: int = -1,
    experts: Iterable[str] = ("high", "low"),
) -> dict[str, torch.Tensor]:
    """Random LoRA tensors for ``modules`` (diffusers names) of ``blocks``, keyed in ``layout``.

    ``naming`` picks ``"lora_A"`` or ``"lora_down"`` parameter names for the
    original-style layouts; ``alpha`` adds ``.alpha`` scalars (musubi always has
    them: ``alpha`` defaults to ``rank`` there); ``image_attention`` adds Wan2.1 I2V
    ``k_img``/``v_img`` modules; ``top_level`` adds LoRAs on modules outside the
    blocks (diffusers names, see :data:`TOP_MODULES`); ``diff_b`` (``"all"`` or
    ``"some"``) adds bias diffs; ``head_diff`` adds lightx2v's ``head.head.diff``;
    ``norm_diffs`` adds (zero) norm-layer diffs. LoKr factors follow LyCORIS'
    ``factorization(dim, lokr_factor)``; ``lokr_decompose`` splits ``lokr_w2`` into
    ``lokr_w2_a @ lokr_w2_b`` of rank ``rank``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    lightx2v = layout in ("lightx2v", "lightx2v_i2v")
    if naming is None:
        naming = (
            "lora_down"
            if layout in ("lightx2v", "lightx2v_i2v", "musubi", "no_prefix", "videox_fun")
            else "lora_A"
        )
    down_name, up_name = ("lora_down", "lora_up") if naming == "lora_down" else ("lora_A", "lora_B")
    if image_attention is None:
        image_attention = layout in ("i2v", "lightx2v_i2v")
    if head_diff is None:
        head_diff = lightx2v
    if norm_diffs is None:
        norm_diffs = lightx2v
    if diff_b is None and lightx2v:
        diff_b = "all"
    if alpha is None and layout == "musubi":
        alpha = float(rank)
    if alpha is None and layout == "videox_fun":
        alpha = rank / 2
    if modules is None and layout == "videox_fun":
        modules = list(ATTN_MODULES)

    shapes = module_shapes(config, image_attention=True)
    top_shapes = top_level_shapes(config)
    module_list = list(modules) if modules is not None else list(ALL_MODULES)
    if image_attention:
        module_list += [m for m in IMAGE_ATTN_MODULES if m not in module_list]
    blocks = list(blocks) if blocks is not None else list(range(int(config["num_layers"])))
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def name(block: int | None, module: str, expert: str | None) -> str:
        """The module part of a key in this layout."""
        if layout in ("peft", "no_prefix_diffusers"):
            inner = module if block is None else f"blocks.{block}.{module}"
            return inner if layout == "no_prefix_diffusers" else f"transformer.{inner}"
        orig = _original_name(module)
        inner = orig if block is None else f"blocks.{block}.{orig}"
        if layout in ("musubi", "lokr", "loha", "videox_fun"):
            prefix = {"musubi": "lora_unet_", "videox_fun": "lora_unet__"}.get(layout, "lycoris_")
            return prefix + inner.replace(".", "_")
        if layout in ("no_prefix", "diffsynth"):
            return inner
        if layout == "peft_wan":
            return f"base_model.model.{inner}"
        if expert is not None:
            return AI_TOOLKIT_PREFIXES[expert] + inner
        return f"diffusion_model.{inner}"

    if layout == "diffsynth":  # PEFT's adapter name inside the parameter
        down_name, up_name = f"{down_name}.default", f"{up_name}.default"
    halves: list[str | None] = list(experts) if layout == "ai_toolkit" else [None]
    tensors: dict[str, torch.Tensor] = {}
    targets = [(h, b, m, shapes[m]) for h in halves for b in blocks for m in module_list]
    targets += [(h, None, m, top_shapes[m]) for h in halves for m in top_level]
    for index, (half, block, module, (fan_in, fan_out)) in enumerate(targets):
        key = name(block, module, half)
        if layout == "lokr":
            out_l, out_k = factorization(fan_out, lokr_factor)
            in_m, in_n = factorization(fan_in, lokr_factor)
            tensors[f"{key}.lokr_w1"] = randn(out_l, in_m)
            if lokr_decompose:
                tensors[f"{key}.lokr_w2_a"] = randn(out_k, rank)
                tensors[f"{key}.lokr_w2_b"] = randn(rank, in_n)
            else:
                tensors[f"{key}.lokr_w2"] = randn(out_k, in_n)
        elif layout == "loha":
            tensors[f"{key}.hada_w1_a"] = randn(fan_out, rank)
            tensors[f"{key}.hada_w1_b"] = randn(rank, fan_in)
            tensors[f"{key}.hada_w2_a"] = randn(fan_out, rank)
            tensors[f"{key}.hada_w2_b"] = randn(rank, fan_in)
        else:
            tensors[f"{key}.{down_name}.weight"] = randn(rank, fan_in)
            tensors[f"{key}.{up_name}.weight"] = randn(fan_out, rank)
        if alpha is not None and layout not in _NO_ALPHA:
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
        if layout == "dora":
            tensors[f"{key}.dora_scale"] = (1.0 + randn(1, fan_in)).to(dtype)
        if diff_b == "all" or (diff_b == "some" and index % 2 == 0):
            suffix = "lora_B.bias" if layout in ("peft", "no_prefix_diffusers") else "diff_b"
            tensors[f"{key}.{suffix}"] = randn(fan_out)

    dim = _dim(config)
    if norm_diffs:
        for block in blocks:
            for norm in NORM_DIFFS:
                tensors[f"diffusion_model.blocks.{block}.{norm}.diff"] = torch.zeros(dim, dtype=dtype)
            tensors[f"diffusion_model.blocks.{block}.norm3.diff_b"] = torch.zeros(dim, dtype=dtype)
    if head_diff:
        fan_in, fan_out = top_shapes["proj_out"]
        tensors["diffusion_model.head.head.diff"] = randn(fan_out, fan_in)
        if head_diff_b:
            tensors["diffusion_model.head.head.diff_b"] = randn(fan_out)
    if layout == "lightx2v_i2v":
        tensors.update(_wan21_leftovers(config, blocks, rank, randn, dtype))
    return tensors


def _wan21_leftovers(config: Mapping[str, Any], blocks: list[int], rank: int, randn, dtype) -> dict:
    """What the real lightx2v Wan2.2 I2V files carry over from Wan2.1 I2V besides k_img/v_img."""
    dim = _dim(config)
    image_dim = int(config.get("image_dim") or 1280)
    out: dict[str, torch.Tensor] = {}
    for block in blocks:
        out[f"diffusion_model.blocks.{block}.cross_attn.norm_k_img.diff"] = torch.zeros(dim, dtype=dtype)
        out[f"diffusion_model.blocks.{block}.diff_m"] = randn(1, 6, dim)
    prefix = "diffusion_model.img_emb.proj"
    for index, (fan_in, fan_out) in {1: (image_dim, image_dim), 3: (image_dim, dim)}.items():
        out[f"{prefix}.{index}.lora_down.weight"] = randn(rank, fan_in)
        out[f"{prefix}.{index}.lora_up.weight"] = randn(fan_out, rank)
        out[f"{prefix}.{index}.diff_b"] = randn(fan_out)
    for index, size in {0: image_dim, 4: dim}.items():  # the two LayerNorms
        out[f"{prefix}.{index}.diff"] = torch.zeros(size, dtype=dtype)
        out[f"{prefix}.{index}.diff_b"] = torch.zeros(size, dtype=dtype)
    return out


def training_metadata(
    *,
    title: str | None = None,
    output_name: str | None = None,
    trigger_phrase: str | None = None,
    tags: Mapping[str, int] | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    base_model: str | None = None,
    min_timestep: int | None = None,
    max_timestep: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Kohya/musubi ``ss_*`` and modelspec metadata like real training tools write."""
    meta: dict[str, str] = {}
    if title:
        meta["modelspec.title"] = title
    if output_name:
        meta["ss_output_name"] = output_name
    if trigger_phrase:
        meta["modelspec.trigger_phrase"] = trigger_phrase
    if tags:
        meta["ss_tag_frequency"] = json.dumps({"1_dataset": dict(tags)})
    if rank is not None:
        meta["ss_network_dim"] = str(rank)
        meta["ss_network_module"] = "networks.lora_wan"
    if alpha is not None:
        meta["ss_network_alpha"] = str(alpha)
    if base_model:
        meta["ss_base_model_version"] = base_model
        meta["modelspec.architecture"] = base_model
    if min_timestep is not None:
        meta["ss_min_timestep"] = str(min_timestep)
    if max_timestep is not None:
        meta["ss_max_timestep"] = str(max_timestep)
    meta.update(extra or {})
    return meta


def write_lora(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_layout(
    path: str | Path,
    config: Mapping[str, Any],
    layout: str,
    *,
    metadata: dict[str, str] | None = None,
    **options: Any,
) -> Path:
    """``write_lora(path, make_lora_tensors(config, layout=layout, **options), metadata)``."""
    return write_lora(path, make_lora_tensors(config, layout=layout, **options), metadata)
