"""Will this LoRA fit that model? A badge decided from the file's header alone.

:func:`check_compat` takes a :class:`~studio.loras.inspect.LoraInfo` (made from the
safetensors header, no tensor data) and a Wan transformer config (the dict in a
diffusers ``transformer/config.json``, ``transformer.config``, or one of the
constants below) and answers with a :class:`Compat`: ``compatible`` (everything
lands), ``partial`` (some modules are skipped) or ``incompatible`` (nothing would
change: wrong model size, a layout the studio does not know, or only blocks the model
does not have), an estimated share of LoRA modules that land, and a sentence.

It predicts what :func:`studio.loras.match.prepare_lora` finds when it really loads
the file (compatible ⇔ 100 %, partial ⇔ 0 < % < 100, incompatible ⇔ it raises
:class:`~studio.errors.LoraFileError`), so the library can show the badge without
loading anything; the load itself still runs the real match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from studio.loras.inspect import Layout, LoraInfo
from studio.loras.keys import describe_dim, leftovers_note, model_name_for_dim
from studio.models.shapes import A14B_TRANSFORMER, TI2V_5B_TRANSFORMER

Level = Literal["compatible", "partial", "incompatible"]

# The transformer configs of the real Wan2.2 models (diffusers ``transformer/config.json``).
# Both experts of A14B (``transformer`` and ``transformer_2``) share this config.
# The real transformers' configs (as in their ``transformer/config.json``), from one place.
WAN22_I2V_A14B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    **A14B_TRANSFORMER,
    "pos_embed_seq_len": None,
}
WAN22_TI2V_5B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    **TI2V_5B_TRANSFORMER,
    "pos_embed_seq_len": None,
}
# Registry name (studio.models.registry.REGISTRY) -> transformer config, for models whose weights are absent.
KNOWN_TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.2-i2v-a14b": WAN22_I2V_A14B_TRANSFORMER_CONFIG,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B_TRANSFORMER_CONFIG,
}

# Layouts whose tensors the converter turns into something diffusers loads: every one the inspector names.
LOADABLE_LAYOUTS = frozenset(get_args(Layout)) - {"mixed", "unknown"}
# Top-level (outside the blocks) Linear layers every Wan transformer has.
_TOP_LINEARS = {
    "proj_out",
    "condition_embedder.time_proj",
    "condition_embedder.text_embedder.linear_1",
    "condition_embedder.text_embedder.linear_2",
    "condition_embedder.time_embedder.linear_1",
    "condition_embedder.time_embedder.linear_2",
}
_IMAGE_EMBEDDER_RE = re.compile(r"^condition_embedder\.image_embedder\.")


class Compat(BaseModel):
    """The compatibility badge of one LoRA on one model (JSON-serialisable).

    ``percent`` estimates the share of the LoRA's modules that land on the model
    (100 for ``compatible``, strictly between 0 and 100 for ``partial``, 0 for
    ``incompatible``); ``reason`` is a sentence for the user; ``notes`` add detail
    that does not change the level (e.g. "LoKr is converted on load").
    """

    model_config = ConfigDict(extra="forbid")

    level: Level
    percent: float
    reason: str
    notes: list[str] = []

    @property
    def ok(self) -> bool:
        """Whether loading the LoRA changes the model at all (compatible or partial)."""
        return self.level != "incompatible"


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def model_dim_of_config(config: Mapping[str, Any]) -> int | None:
    """Hidden size (heads × head dim) of a Wan transformer config."""
    heads, head_dim = _int(config, "num_attention_heads"), _int(config, "attention_head_dim")
    return heads * head_dim if heads and head_dim else None


def known_transformer_config(model_name: str) -> dict[str, Any] | None:
    """The transformer config of a registry model (``demo`` included), or ``None``."""
    if model_name == "demo":
        from studio.models.demo import TRANSFORMER_CONFIG

        return dict(TRANSFORMER_CONFIG)
    config = KNOWN_TRANSFORMER_CONFIGS.get(model_name)
    return dict(config) if config is not None else None


def block_ranges(blocks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0–2, 5'``."""
    parts: list[str] = []
    start = prev = None
    for b in sorted(blocks):
        if start is None:
            start = prev = b
        elif b == prev + 1:
            prev = b
        else:
            parts.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = b
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
    return ", ".join(parts)


def _plural(n: int | float, word: str) -> str:
    n = round(n)
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _layout_notes(info: LoraInfo) -> list[str]:
    notes = []
    if info.layout in ("lokr", "loha"):
        notes.append(f"{info.layout_label} is converted exactly to a plain LoRA when it is loaded.")
    if info.layout == "dora" or info.dora:
        notes.append(
            "Its DoRA magnitudes (dora_scale) are left out, as diffusers does; results can differ "
            "from tools that apply DoRA."
        )
    if info.layout == "no_prefix":
        notes.append("Its keys have no prefix; they are read as Wan module names.")
    if len(info.experts_in_file) == 2:
        notes.append(
            "It holds both experts in one file: the transformer_1 half lands on the high-noise expert, "
            "the transformer_2 half on the low-noise expert."
        )
    return notes


def check_compat(info: LoraInfo, model_config: Mapping[str, Any], *, model_name: str | None = None) -> Compat:
    """The compatibility badge of the LoRA described by ``info`` on a model with ``model_config``.

    Decided from the header alone (dims, layout, module kinds, blocks, image attention):
    no tensor data is read. ``model_name`` is how the sentence names the model
    (default: a name derived from its hidden size, e.g. "Wan 14B").
    """
    dim = model_dim_of_config(model_config)
    layers = _int(model_config, "num_layers")
    ffn = _int(model_config, "ffn_dim")
    image_attention = bool(model_config.get("added_kv_proj_dim") or model_config.get("image_dim"))
    image_embedder = bool(model_config.get("image_dim"))
    name = model_name or model_name_for_dim(dim) or "the loaded model"
    model_text = f"{name} (dim {dim})" if dim else name
    notes = _layout_notes(info)

    def incompatible(reason: str) -> Compat:
        return Compat(level="incompatible", percent=0.0, reason=reason, notes=notes)

    # -- nothing to load / nothing the studio can read --------------------------------
    if info.layout == "unknown":
        return incompatible(
            f"{info.file_name} does not look like a Wan LoRA: none of its {info.num_tensors} tensor names "
            "is one the studio knows. Check that it is a LoRA for Wan and not a full model or a LoRA for "
            "another model."
        )
    if info.layout == "mixed":
        return incompatible(
            f"{info.file_name} mixes key layouts (e.g. diffusers names and original Wan names), so the "
            "studio cannot tell how to load it; ask its author for a clean file."
        )
    if info.layout not in LOADABLE_LAYOUTS:
        return incompatible(f"{info.file_name} has a layout the studio cannot load ({info.layout_label}).")
    if info.num_modules == 0:
        return incompatible(
            f"{info.file_name} holds no LoRA weights the studio can apply ({info.layout_label}); "
            "check that it is a LoRA for Wan."
        )

    # -- wrong model size ---------------------------------------------------------------
    if info.model_dim and dim and info.model_dim != dim:
        return incompatible(
            f"This LoRA is for {describe_dim(info.model_dim, image_attention=info.image_attention)} but "
            f"the loaded model is {model_text}, so it would change nothing; choose a LoRA made for {name}, "
            "or load the model this LoRA was made for."
        )
    if info.model_dim is None:
        notes.append("The model size it was made for cannot be read from its header.")

    # -- how many modules land ----------------------------------------------------------
    total = info.num_modules
    if info.block_modules or not info.num_blocks:
        block_counts = dict(info.block_modules)
        block_total = sum(block_counts.values())
        in_range = sum(c for b, c in block_counts.items() if layers is None or b < layers)
        beyond_blocks = sorted(b for b in block_counts if layers is not None and b >= layers)
        top = list(info.top_modules)
    else:  # an info without per-block counts: spread the modules evenly over the blocks
        top_kinds = ("embeddings", "image_embeddings", "head")
        in_blocks = max(0, total - sum(info.kind_modules.get(k, 0) for k in top_kinds))
        block_total = in_blocks or total
        span = (info.max_block or 0) + 1
        inside = span if layers is None else min(span, layers)
        in_range = block_total * inside / span
        beyond_blocks = list(range(layers, span)) if layers is not None and span > layers else []
        top = []

    kinds = info.kind_modules
    if not kinds and info.image_attention:  # older info: about two image modules per block
        kinds = {"image_cross_attn": 2 * max(1, info.num_blocks)}
    # Wan2.1 I2V image-branch modules on a model without image attention are leftovers: they have
    # nothing to land on and do not count against the match (as in the real match report).
    image_modules = 0 if image_attention else kinds.get("image_cross_attn", 0)
    ffn_mismatch = bool(info.ffn_dim and ffn and info.ffn_dim != ffn)
    ffn_modules = kinds.get("ffn", 0) if ffn_mismatch else 0
    other_modules = kinds.get("other", 0)
    image_share = min(1.0, image_modules / block_total) if block_total else 0.0
    bad_share = min(1.0 - image_share, (ffn_modules + other_modules) / block_total) if block_total else 0.0
    landing = in_range * (1.0 - image_share - bad_share)

    top_missing: list[str] = []
    leftovers = image_modules
    for module in top:
        if module in _TOP_LINEARS or (_IMAGE_EMBEDDER_RE.match(module) and image_embedder):
            landing += 1
        elif _IMAGE_EMBEDDER_RE.match(module):
            leftovers += 1
        else:
            top_missing.append(module)
    total -= leftovers
    landing = round(landing, 6)
    if leftovers:
        notes.append(leftovers_note(round(leftovers)))

    # -- the sentence -------------------------------------------------------------------
    reasons: list[str] = []
    if beyond_blocks:
        reasons.append(
            f"blocks {block_ranges(beyond_blocks)} do not exist in {name}, which has {layers} blocks"
        )
    if ffn_modules:
        reasons.append(
            f"its feed-forward layers are shaped for ffn dim {info.ffn_dim} but {name} has {ffn}, so they "
            "are skipped"
        )
    if other_modules:
        reasons.append(f"{_plural(other_modules, 'module')} in its blocks are not Linear layers")
    if top_missing:
        shown = ", ".join(top_missing[:3]) + (" …" if len(top_missing) > 3 else "")
        reasons.append(f"{name} has no Linear layer for {shown}")

    if total <= 0:
        return incompatible(
            f"This LoRA only targets Wan2.1 I2V image attention (k_img/v_img, img_emb), which {name} does "
            "not have, so it would change nothing; choose a LoRA made for this model."
        )
    if landing <= 0:
        if beyond_blocks and in_range == 0:
            blocks = sorted(info.block_modules) or beyond_blocks
            return incompatible(
                f"This LoRA only targets blocks {block_ranges(blocks)}, but {name} has {layers} blocks "
                f"(0–{(layers or 1) - 1}), so it would change nothing; check that it was made for {name}."
            )
        why = "; ".join(reasons) or "none of its modules fit"
        return incompatible(f"None of this LoRA's modules would land on {model_text}: {why}.")
    percent = round(100.0 * landing / total, 2)
    if landing >= total and not reasons:
        what = f"all {_plural(total, 'LoRA module')}" if total > 1 else "its LoRA module"
        return Compat(
            level="compatible", percent=100.0, reason=f"Fits {model_text}: {what} land.", notes=notes
        )
    percent = min(99.99, max(0.01, percent))
    if not reasons:
        reasons.append("some of its modules do not fit")
    return Compat(
        level="partial",
        percent=percent,
        reason=f"About {percent:g}% of this LoRA lands on {name}: " + "; ".join(reasons) + ".",
        notes=notes,
    )
