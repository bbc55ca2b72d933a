"""LoRA tensor names: which module of a Wan transformer a key targets, and how.

Wan LoRAs come with three module *namings* and a handful of *prefixes*:

* diffusers/PEFT naming (``blocks.0.attn1.to_q``), prefixed ``transformer.`` or
  ``base_model.model.`` (or nothing);
* the original Wan / ComfyUI naming (``blocks.0.self_attn.q``), prefixed
  ``diffusion_model.`` or ``model.diffusion_model.`` (or nothing), also by PEFT saves of
  Wan's own modules (``base_model.model.blocks.39.ffn.0``) and by ai-toolkit files that
  hold both experts (``diffusion_model.transformer_1.`` = high noise, ``transformer_2.`` =
  low noise: :attr:`ParsedKey.expert`);
* musubi-tuner / Kohya naming (``lora_unet_blocks_0_self_attn_q``), also used by
  LyCORIS files (``lycoris_blocks_0_self_attn_q``) and VideoX-Fun (``lora_unet__blocks_0_…``,
  a double underscore); parsed here into the original dotted naming.

PEFT's adapter name inside a parameter (DiffSynth-Studio: ``….lora_A.default.weight``) is
read as the plain parameter (:attr:`ParsedKey.adapter` keeps the name). lightx2v's per-block
``diff_m`` is the diff of the block's modulation (``blocks.N.modulation``).

:func:`parse_key` splits a key into prefix, module and parameter
(``lora_A.weight``, ``alpha``, ``diff_b``, ``lokr_w1`` …) and maps the module to its
diffusers name, so inspection, conversion and the match report share one table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

Naming = Literal["diffusers", "original", "musubi"]
ModuleKind = Literal[
    "self_attn",
    "cross_attn",
    "image_cross_attn",
    "ffn",
    "embeddings",
    "image_embeddings",
    "head",
    "norm",
    "modulation",
    "other",
]
Expert = Literal["high", "low"]
# Kinds whose diffs diffusers does not apply (norm weights, modulation tables): left out on purpose.
PARAMETER_KINDS = ("norm", "modulation")
SkipKind = Literal["unknown_module", "shape_mismatch", "unsupported_layout"]

# Parameter names after the module name; longer names first so "lokr_w1_a" wins over "lokr_w1".
LORA_DOWN = ("lora_A.weight", "lora_down.weight")
LORA_UP = ("lora_B.weight", "lora_up.weight")
LOKR_PARAMS = ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "lokr_t2")
LOHA_PARAMS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
PARAMS = (
    *LORA_DOWN,
    *LORA_UP,
    "lora_B.bias",
    "lora_mid.weight",
    "lora_magnitude_vector",
    "dora_scale",
    "alpha",
    "diff_b",
    "diff",
    *LOKR_PARAMS,
    *LOHA_PARAMS,
)

# Original naming inside a block -> diffusers naming inside a block.
BLOCK_ORIGINAL_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm1": "norm1",
    "norm2": "norm3",
    "norm3": "norm2",
    "modulation": "scale_shift_table",
}
# Original naming outside the blocks -> diffusers naming.
TOP_ORIGINAL_TO_DIFFUSERS = {
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "time_projection.1": "condition_embedder.time_proj",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "patch_embedding": "patch_embedding",
}
BLOCK_DIFFUSERS_TO_ORIGINAL = {v: k for k, v in BLOCK_ORIGINAL_TO_DIFFUSERS.items()}
TOP_DIFFUSERS_TO_ORIGINAL = {v: k for k, v in TOP_ORIGINAL_TO_DIFFUSERS.items() if k != "head.modulation"}

# Original-naming modules whose LoRA pairs diffusers' Wan converter handles.
DIFFUSERS_CONVERTIBLE_BLOCK = {
    k
    for k in BLOCK_ORIGINAL_TO_DIFFUSERS
    if k.startswith(("self_attn.", "cross_attn.", "ffn.")) and "norm" not in k
}
DIFFUSERS_CONVERTIBLE_TOP = {
    "head.head",
    "time_projection.1",
    "text_embedding.0",
    "text_embedding.2",
    "time_embedding.0",
    "time_embedding.2",
    "img_emb.proj.1",
    "img_emb.proj.3",
}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# "lora_unet__" (VideoX-Fun) before "lora_unet_" (musubi / Kohya).
_MUSUBI_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_")
# ai-toolkit with split_multistage_loras: false: both experts in one file.
EXPERT_PREFIXES: dict[str, Expert] = {
    "diffusion_model.transformer_1.": "high",
    "diffusion_model.transformer_2.": "low",
}
# PEFT's adapter name inside a parameter name: "lora_A.default.weight" (DiffSynth-Studio).
_ADAPTER_PARAM_RE = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])\.(?P<adapter>[A-Za-z0-9_\-]+)\.weight$")
_MUSUBI_BLOCK_RE = re.compile(
    r"^blocks_(\d+)_(?:(self_attn|cross_attn)_(q|k|v|o|k_img|v_img|norm_q|norm_k|norm_k_img)"
    r"|ffn_(0|2)|(norm1|norm2|norm3|modulation))$"
)
_MUSUBI_TOP = {k.replace(".", "_"): k for k in TOP_ORIGINAL_TO_DIFFUSERS}
_ORIGINAL_HINTS = re.compile(
    r"(^|\.)(self_attn|cross_attn|ffn\.\d|head\.head|text_embedding|time_embedding|"
    r"time_projection|img_emb|norm3|modulation)(\.|$)"
)
_DIFFUSERS_HINTS = re.compile(
    r"(^|\.)(attn1|attn2|ffn\.net|proj_out|condition_embedder|scale_shift_table)(\.|$)"
)


class SkippedKey(BaseModel):
    """A tensor of a LoRA file that will not land on the model, and why."""

    model_config = ConfigDict(extra="forbid")

    key: str
    module: str | None = None
    kind: SkipKind
    reason: str


@dataclass(frozen=True)
class ParsedKey:
    """One tensor name, split up.

    ``module`` is in the key's own naming (musubi names are turned into the dotted
    original naming); ``diffusers_module`` is the diffusers name (``None`` when the
    module is not one we know).
    """

    key: str
    naming: Naming
    prefix: str
    module: str
    param: str
    diffusers_module: str | None
    block: int | None
    kind: ModuleKind
    expert: Expert | None = None  # the expert a two-expert (ai-toolkit) file names for this key
    adapter: str | None = None  # PEFT's adapter name inside the parameter ("default"), if any


def split_param(key: str) -> tuple[str, str] | None:
    """``'x.y.lora_A.weight'`` -> ``('x.y', 'lora_A.weight')``; ``None`` for an unknown parameter."""
    for param in PARAMS:
        if key.endswith("." + param):
            return key[: -len(param) - 1], param
    return None


def module_kind(diffusers_module: str | None) -> ModuleKind:
    """What part of the transformer a diffusers module name belongs to."""
    if diffusers_module is None:
        return "other"
    m = _BLOCK_RE.match(diffusers_module)
    inner = m.group(2) if m else diffusers_module
    if "norm" in inner.split(".")[-1]:
        return "norm"
    if inner == "scale_shift_table":
        return "modulation"
    if m:
        if inner.startswith("attn1."):
            return "self_attn"
        if inner in ("attn2.add_k_proj", "attn2.add_v_proj"):
            return "image_cross_attn"
        if inner.startswith("attn2."):
            return "cross_attn"
        if inner.startswith("ffn."):
            return "ffn"
        return "other"
    if inner.startswith("condition_embedder.image_embedder."):
        return "image_embeddings"
    if inner.startswith(("condition_embedder.", "patch_embedding")):
        return "embeddings"
    if inner == "proj_out":
        return "head"
    return "other"


def original_to_diffusers(module: str) -> str | None:
    m = _BLOCK_RE.match(module)
    if m:
        inner = BLOCK_ORIGINAL_TO_DIFFUSERS.get(m.group(2))
        return f"blocks.{m.group(1)}.{inner}" if inner else None
    return TOP_ORIGINAL_TO_DIFFUSERS.get(module)


def diffusers_to_original(module: str) -> str | None:
    m = _BLOCK_RE.match(module)
    if m:
        inner = BLOCK_DIFFUSERS_TO_ORIGINAL.get(m.group(2))
        return f"blocks.{m.group(1)}.{inner}" if inner else None
    return TOP_DIFFUSERS_TO_ORIGINAL.get(module)


def _musubi_to_original(name: str) -> str | None:
    m = _MUSUBI_BLOCK_RE.match(name)
    if m:
        block, attn, proj, ffn, other = m.groups()
        if attn:
            return f"blocks.{block}.{attn}.{proj}"
        if ffn:
            return f"blocks.{block}.ffn.{ffn}"
        return f"blocks.{block}.{other}"
    return _MUSUBI_TOP.get(name)


def _block_of(module: str) -> int | None:
    m = _BLOCK_RE.match(module)
    return int(m.group(1)) if m else None


def _naming_of(module: str) -> Naming | None:
    """The naming of a module name without a telling prefix (``None``: not a Wan module name)."""
    original = original_to_diffusers(module) is not None or _ORIGINAL_HINTS.search(module)
    if original and not _DIFFUSERS_HINTS.search(module):
        return "original"
    if _DIFFUSERS_HINTS.search(module) or module.startswith("blocks."):
        return "diffusers"
    return None


def parse_key(key: str) -> ParsedKey | None:
    """Parse a LoRA tensor name; ``None`` when it is not one the studio knows."""
    adapter = None
    if key.endswith(".diff_m"):  # lightx2v: the diff of a block's modulation table
        raw_module, param = key[: -len(".diff_m")] + ".modulation", "diff"
    elif (am := _ADAPTER_PARAM_RE.match(key)) and am.group("adapter") != "weight":
        raw_module, param, adapter = am.group("module"), f"{am.group('ab')}.weight", am.group("adapter")
    else:
        split = split_param(key)
        if split is None:
            return None
        raw_module, param = split

    def make(
        naming: Naming, prefix: str, module: str, diffusers: str | None, expert: Expert | None = None
    ) -> ParsedKey:
        return ParsedKey(
            key=key,
            naming=naming,
            prefix=prefix,
            module=module,
            param=param,
            diffusers_module=diffusers,
            block=_block_of(module),
            kind=module_kind(diffusers),
            expert=expert,
            adapter=adapter,
        )

    for prefix in _MUSUBI_PREFIXES:
        if raw_module.startswith(prefix):
            name = raw_module[len(prefix) :]
            original = _musubi_to_original(name)
            if original is None:
                return None
            return make("musubi", prefix, original, original_to_diffusers(original))
    for prefix, expert in EXPERT_PREFIXES.items():
        if raw_module.startswith(prefix):
            module = raw_module[len(prefix) :]
            if _naming_of(module) == "diffusers":
                return make("diffusers", prefix, module, module, expert)
            return make("original", prefix, module, original_to_diffusers(module), expert)
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if raw_module.startswith(prefix):
            module = raw_module[len(prefix) :]
            return make("original", prefix, module, original_to_diffusers(module))
    if raw_module.startswith("transformer."):
        module = raw_module[len("transformer.") :]
        return make("diffusers", "transformer.", module, module)
    if raw_module.startswith("base_model.model."):  # PEFT: diffusers names, or Wan's own module names
        module = raw_module[len("base_model.model.") :]
        if _naming_of(module) == "original":
            return make("original", "base_model.model.", module, original_to_diffusers(module))
        return make("diffusers", "base_model.model.", module, module)
    # No prefix: decide the naming from the module names.
    naming = _naming_of(raw_module)
    if naming == "original":
        return make("original", "", raw_module, original_to_diffusers(raw_module))
    if naming == "diffusers":
        return make("diffusers", "", raw_module, raw_module)
    return None


# Wan2.1 I2V's image branch (CLIP image tokens): Wan2.2 has none of these layers.
_IMAGE_BRANCH_RE = re.compile(
    r"^(?:blocks\.\d+\.attn2\.(?:add_k_proj|add_v_proj|norm_added_k)|condition_embedder\.image_embedder\..+)$"
)


def is_image_branch(module: str) -> bool:
    """Whether a diffusers module name belongs to Wan2.1 I2V's image branch (k_img/v_img, img_emb)."""
    return bool(_IMAGE_BRANCH_RE.match(module))


def leftovers_note(modules: int) -> str:
    """The note for a LoRA whose Wan2.1 I2V image-branch parts have nothing to land on."""
    return (
        f"Its Wan2.1 I2V image-branch parts (k_img/v_img, img_emb: {modules} module(s)) have nothing to "
        "land on, because this model has no image attention; they were left out and everything else lands."
    )


# Hidden sizes of the Wan models (inner dim = heads x head_dim) -> what to call them.
MODEL_SIZES = {
    24: "the demo model",
    1536: "Wan 1.3B",
    3072: "Wan2.2 TI2V 5B",
    5120: "Wan 14B",
}


def model_name_for_dim(dim: int | None, *, image_attention: bool = False) -> str | None:
    """A human name for a Wan model of hidden size ``dim``."""
    if dim is None:
        return None
    name = MODEL_SIZES.get(dim, f"a Wan model of unknown size (dim {dim})")
    if image_attention and dim == 5120:
        return "Wan2.1 I2V 14B"
    if image_attention:
        return f"{name} with Wan2.1 I2V image attention"
    return name


def describe_dim(dim: int | None, *, image_attention: bool = False) -> str:
    """``'Wan 14B (dim 5120)'``."""
    if dim is None:
        return "an unknown model"
    return f"{model_name_for_dim(dim, image_attention=image_attention)} (dim {dim})"


def dim_votes(diffusers_module: str, in_features: int | None, out_features: int | None) -> list[int]:
    """Hidden-size values implied by a module's in/out features (Wan: most Linears are dim -> dim)."""
    m = _BLOCK_RE.match(diffusers_module)
    votes: list[int] = []
    if m:
        inner = m.group(2)
        if inner.startswith(("attn1.to_", "attn2.to_", "attn2.add_")):
            votes += [v for v in (in_features, out_features) if v]
        elif inner == "ffn.net.0.proj" and in_features:
            votes.append(in_features)
        elif inner == "ffn.net.2" and out_features:
            votes.append(out_features)
    elif diffusers_module in ("proj_out", "condition_embedder.time_proj") and in_features:
        votes.append(in_features)
    elif diffusers_module.endswith(("text_embedder.linear_2", "time_embedder.linear_2")):
        votes += [v for v in (in_features, out_features) if v]
    return votes
