"""What a LoRA file is, read from its header alone.

:func:`inspect_lora` reads the safetensors header (plus the few scalar ``alpha``
tensors) and tells the library everything it shows about a file: the key layout,
rank(s) and alpha(s), which parts of the transformer it targets, how many blocks,
which Wan model it was made for (from the tensor shapes), whether it is meant for
the high-noise or the low-noise expert of Wan2.2 A14B, trigger words and training
metadata, the file size and its sha256 (cached, see :mod:`studio.loras.hashing`).
Tensor data is never read, so inspecting a multi-GB file is instant.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from studio.loras.hashing import file_sha256
from studio.loras.keys import (
    LOHA_PARAMS,
    LOKR_PARAMS,
    LORA_DOWN,
    LORA_UP,
    PARAMETER_KINDS,
    Expert,
    ParsedKey,
    dim_votes,
    model_name_for_dim,
    parse_key,
)
from studio.loras.names import expert_from_name, pair_candidates, task_from_name
from studio.loras.safetensors_io import SafetensorsHeader, read_header, read_tensors

Layout = Literal[
    "diffusers",
    "original",
    "lightx2v",
    "musubi",
    "videox_fun",
    "diffsynth",
    "peft_wan",
    "ai_toolkit",
    "no_prefix",
    "lokr",
    "loha",
    "dora",
    "mixed",
    "unknown",
]

LAYOUT_LABELS: dict[str, str] = {
    "diffusers": "diffusers / PEFT",
    "original": "original Wan / ComfyUI",
    "lightx2v": "lightx2v-style (with diff / diff_b tensors)",
    "musubi": "musubi-tuner / Kohya",
    "videox_fun": "VideoX-Fun (lora_unet__…)",
    "diffsynth": "DiffSynth-Studio (PEFT adapter names)",
    "peft_wan": "PEFT save of Wan's own module names",
    "ai_toolkit": "ai-toolkit (both experts in one file)",
    "no_prefix": "keys without a prefix",
    "lokr": "LyCORIS LoKr",
    "loha": "LyCORIS LoHa",
    "dora": "DoRA",
    "mixed": "mixed key layouts",
    "unknown": "not a Wan LoRA layout the studio knows",
}

# Metadata keys copied into LoraInfo.training (values are shortened).
TRAINING_KEYS = (
    "ss_output_name",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_base_model_version",
    "ss_sd_model_name",
    "ss_dit",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_num_epochs",
    "ss_epoch",
    "ss_steps",
    "ss_max_train_steps",
    "ss_num_train_images",
    "ss_resolution",
    "ss_mixed_precision",
    "ss_optimizer",
    "ss_min_timestep",
    "ss_max_timestep",
    "ss_timestep_sampling",
    "ss_discrete_flow_shift",
    "ss_training_started_at",
    "ss_training_finished_at",
    "modelspec.title",
    "modelspec.architecture",
    "modelspec.implementation",
    "modelspec.author",
    "modelspec.description",
    "modelspec.date",
    "modelspec.license",
    "modelspec.resolution",
    "modelspec.trigger_phrase",
    "modelspec.tags",
    "modelspec.usage_hint",
)
TRIGGER_KEYS = (
    "modelspec.trigger_phrase",
    "trigger_phrase",
    "trigger_words",
    "trigger_word",
    "ss_trigger_words",
    "activation_text",
    "trained_words",
)
_MAX_VALUE = 500
_MAX_TAGS = 20
_MAX_ALPHA_READS = 4096


class LoraInfo(BaseModel):
    """Everything the studio knows about a LoRA file without loading it (JSON-serialisable)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    file_name: str
    file_size: int
    sha256: str | None = None

    layout: Layout
    layout_label: str
    naming: Literal["diffusers", "original", "musubi", "mixed"] | None = None
    key_prefix: str | None = None
    dora: bool = False
    has_diff: bool = False
    has_diff_b: bool = False
    diff_b_partial: bool = False
    num_tensors: int = 0
    num_modules: int = 0
    unknown_keys: int = 0
    dtypes: list[str] = []

    rank: int | None = None
    ranks: list[int] = []
    alpha: float | None = None
    alphas: list[float] = []

    module_kinds: list[str] = []
    num_blocks: int = 0
    max_block: int | None = None
    # LoRA modules (those counted in num_modules) per block index, per kind, and the
    # (diffusers) names of those outside the blocks: enough to tell from the header how
    # much of the file lands on a model with fewer blocks or without image attention.
    block_modules: dict[int, int] = {}
    kind_modules: dict[str, int] = {}
    top_modules: list[str] = []

    model_dim: int | None = None
    ffn_dim: int | None = None
    image_attention: bool = False
    task: Literal["i2v", "t2v"] | None = None
    base_model: str | None = None

    expert_hint: Expert | None = None
    expert_hint_source: Literal["file name", "metadata", "sibling file", "keys"] | None = None
    pair_file: str | None = None
    # The experts a two-expert file (ai-toolkit's transformer_1/transformer_2) holds a half for.
    experts_in_file: list[Expert] = []

    title: str | None = None
    trigger_words: list[str] = []
    tags: list[str] = []
    training: dict[str, str] = {}
    notes: list[str] = []


# ---------------------------------------------------------------------------
# Expert hints from sibling files and metadata
# ---------------------------------------------------------------------------


def _sibling_hint(path: Path) -> tuple[Expert | None, str | None]:
    """(expert hint, partner file name) from files next to ``path`` that differ only in high/low."""
    stem, suffix = path.stem, path.suffix
    for kind, candidate in pair_candidates(stem):
        sibling = path.with_name(candidate + suffix)
        if sibling != path and sibling.is_file():
            return kind, sibling.name
    # "foo" next to "foo_low" is the high half (and the other way round).
    if expert_from_name(stem) is None:
        for sep in ("_", "-", "."):
            for word, kind in (("low", "high"), ("LOW", "high"), ("high", "low"), ("HIGH", "low")):
                sibling = path.with_name(f"{stem}{sep}{word}{suffix}")
                if sibling.is_file():
                    return kind, sibling.name  # type: ignore[return-value]
    return None, None


def _expert_from_metadata(metadata: Mapping[str, str]) -> Expert | None:
    for key in ("studio.expert", "expert", "ss_output_name", "modelspec.title", "ss_dit", "ss_sd_model_name"):
        value = metadata.get(key)
        if not value:
            continue
        value = Path(value.replace("\\", "/")).name
        if key in ("studio.expert", "expert") and value.lower() in ("high", "low"):
            return value.lower()  # type: ignore[return-value]
        hint = expert_from_name(Path(value).stem if value.endswith(".safetensors") else value)
        if hint:
            return hint
    try:
        lo = float(metadata["ss_min_timestep"])
        hi = float(metadata.get("ss_max_timestep", "1000"))
    except (KeyError, ValueError):
        return None
    if lo >= 500:
        return "high"
    if lo <= 100 and hi <= 950:
        return "low"
    return None


# ---------------------------------------------------------------------------
# Metadata: trigger words, tags, training settings
# ---------------------------------------------------------------------------


def _short(value: str) -> str:
    return value if len(value) <= _MAX_VALUE else value[: _MAX_VALUE - 1] + "…"


def _split_words(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    items = [str(x) for x in parsed] if isinstance(parsed, list) else re.split(r"[,\n;]", value)
    words = []
    for item in items:
        item = item.strip()
        if item and item not in words:
            words.append(item[:100])
    return words[:50]


def _tags_from_frequency(value: str) -> list[str]:
    try:
        data = json.loads(value)
    except ValueError:
        return []
    counts: Counter[str] = Counter()
    if isinstance(data, dict):
        for dataset in data.values():
            if isinstance(dataset, dict):
                for tag, n in dataset.items():
                    if isinstance(n, int | float) and isinstance(tag, str) and tag.strip():
                        counts[tag.strip()[:100]] += int(n)
    return [tag for tag, _ in counts.most_common(_MAX_TAGS)]


def metadata_summary(metadata: Mapping[str, str]) -> tuple[str | None, list[str], list[str], dict[str, str]]:
    """(title, trigger words, top tags, training settings) from safetensors metadata."""
    triggers: list[str] = []
    for key in TRIGGER_KEYS:
        if metadata.get(key):
            for word in _split_words(metadata[key]):
                if word not in triggers:
                    triggers.append(word)
    tags = _tags_from_frequency(metadata["ss_tag_frequency"]) if metadata.get("ss_tag_frequency") else []
    if not triggers and tags:
        triggers = tags[:3]
    training = {k: _short(metadata[k]) for k in TRAINING_KEYS if metadata.get(k)}
    title = metadata.get("modelspec.title") or metadata.get("ss_output_name") or None
    return (_short(title) if title else None), triggers, tags, training


# ---------------------------------------------------------------------------
# Shapes, ranks, layout
# ---------------------------------------------------------------------------


def _module_io(params: Mapping[str, tuple[int, ...]]) -> tuple[int | None, int | None, int | None]:
    """(in_features, out_features, rank) of one module from its parameter shapes."""
    fan_in = fan_out = rank = None
    for name in LORA_DOWN:
        if name in params and len(params[name]) >= 2:
            rank, fan_in = params[name][0], params[name][1]
    for name in LORA_UP:
        if name in params and len(params[name]) >= 2:
            fan_out, rank = params[name][0], params[name][1]
    if "diff" in params and len(params["diff"]) == 2:
        fan_out, fan_in = params["diff"]
    if "diff_b" in params and len(params["diff_b"]) == 1 and fan_out is None:
        fan_out = params["diff_b"][0]
    if "hada_w1_a" in params and "hada_w1_b" in params:
        fan_out, rank = params["hada_w1_a"][0], params["hada_w1_a"][-1]
        fan_in = params["hada_w1_b"][-1] if len(params["hada_w1_b"]) == 2 else None
    if any(p in params for p in LOKR_PARAMS):
        w1 = _lokr_factor_shape(params, "w1")
        w2 = _lokr_factor_shape(params, "w2")
        if w1 and w2:
            fan_out, fan_in = w1[0] * w2[0], w1[1] * w2[1]
        for p in ("lokr_w2_b", "lokr_w1_b"):
            if p in params:
                rank = params[p][0]
                break
    return fan_in, fan_out, rank


def _lokr_factor_shape(params: Mapping[str, tuple[int, ...]], which: str) -> tuple[int, int] | None:
    full = params.get(f"lokr_{which}")
    if full is not None and len(full) == 2:
        return full[0], full[1]
    a, b = params.get(f"lokr_{which}_a"), params.get(f"lokr_{which}_b")
    if a is not None and b is not None and len(a) == 2 and len(b) == 2:
        return a[0], b[1]
    return None


def _layout(parsed: list[ParsedKey]) -> tuple[Layout, str | None, str | None]:
    if not parsed:
        return "unknown", None, None
    params = {p.param for p in parsed}
    namings = {p.naming for p in parsed}
    prefixes = Counter(p.prefix for p in parsed)
    naming = namings.pop() if len(namings) == 1 else "mixed"
    prefix = prefixes.most_common(1)[0][0]
    if naming == "mixed":
        return "mixed", naming, prefix
    if params & set(LOKR_PARAMS):
        return "lokr", naming, prefix
    if params & set(LOHA_PARAMS):
        return "loha", naming, prefix
    if "dora_scale" in params or "lora_magnitude_vector" in params:
        return "dora", naming, prefix
    if any(p.expert for p in parsed):
        return "ai_toolkit", naming, prefix
    if naming == "musubi":
        return ("videox_fun" if prefix == "lora_unet__" else "musubi"), naming, prefix
    if any(p.adapter for p in parsed):
        return "diffsynth", naming, prefix
    if prefix == "base_model.model." and naming == "original":
        return "peft_wan", naming, prefix
    if prefix == "":
        return "no_prefix", naming, prefix
    if naming == "original" and params & {"diff", "diff_b"}:
        return "lightx2v", naming, prefix
    return naming, naming, prefix  # "diffusers" or "original"


def _task_from_metadata(metadata: Mapping[str, str]) -> Literal["i2v", "t2v"] | None:
    for key in (
        "studio.task",
        "ss_base_model_version",
        "modelspec.architecture",
        "ss_dit",
        "ss_sd_model_name",
    ):
        value = metadata.get(key)
        if value:
            task = task_from_name(Path(value.replace("\\", "/")).name)
            if task:
                return task
    return None


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def summarise(
    path: Path,
    header: SafetensorsHeader,
    scalars: Mapping[str, torch.Tensor],
    *,
    sha256: str | None = None,
) -> LoraInfo:
    """Build a :class:`LoraInfo` from a validated header and the file's ``alpha`` scalars."""
    parsed: list[ParsedKey] = []
    unknown = 0
    for key in header.tensors:
        p = parse_key(key)
        if p is None:
            unknown += 1
        else:
            parsed.append(p)
    layout, naming, prefix = _layout(parsed)

    ModuleKey = tuple[str, str, str | None]
    modules: dict[ModuleKey, dict[str, tuple[int, ...]]] = {}
    diffusers_names: dict[ModuleKey, str | None] = {}
    kinds: dict[ModuleKey, str] = {}
    block_of: dict[ModuleKey, int | None] = {}
    for p in parsed:
        mkey = (p.naming, p.module, p.expert)
        modules.setdefault(mkey, {})[p.param] = header.tensors[p.key].shape
        diffusers_names[mkey] = p.diffusers_module
        kinds[mkey] = p.kind
        block_of[mkey] = p.block

    ranks: Counter[int] = Counter()
    votes: Counter[int] = Counter()
    ffn_dims: Counter[int] = Counter()
    lora_modules = 0
    diff_b_modules = 0
    weight_modules = 0
    block_modules: Counter[int] = Counter()
    kind_modules: Counter[str] = Counter()
    top_modules: list[str] = []
    for mkey, params in modules.items():
        fan_in, fan_out, rank = _module_io(params)
        has_weight = (
            any(p in params for p in (*LORA_DOWN, *LORA_UP, "diff", *LOKR_PARAMS, *LOHA_PARAMS))
            and kinds[mkey] not in PARAMETER_KINDS
        )
        if has_weight or ("diff_b" in params and kinds[mkey] not in PARAMETER_KINDS):
            lora_modules += 1
            kind_modules[kinds[mkey]] += 1
            block = block_of[mkey]
            if block is not None:
                block_modules[block] += 1
            else:
                top_modules.append(diffusers_names[mkey] or mkey[1])
        if has_weight:
            weight_modules += 1
            if "diff_b" in params:
                diff_b_modules += 1
        if rank and kinds[mkey] not in PARAMETER_KINDS and "diff" not in params:
            ranks[rank] += 1
        dmod = diffusers_names[mkey]
        if dmod:
            for v in dim_votes(dmod, fan_in, fan_out):
                votes[v] += 1
            if dmod.endswith("ffn.net.0.proj") and fan_out:
                ffn_dims[fan_out] += 1

    alphas: Counter[float] = Counter()
    for p in parsed:
        if p.param == "alpha" and p.key in scalars:
            t = scalars[p.key]
            if t.numel() >= 1:
                alphas[_round(float(t.reshape(-1)[0].float()))] += 1

    blocks = {p.block for p in parsed if p.block is not None}
    image_attention = any(p.kind == "image_cross_attn" for p in parsed)
    model_dim = votes.most_common(1)[0][0] if votes else None
    meta = header.metadata
    title, triggers, tags, training = metadata_summary(meta)

    notes: list[str] = []
    if meta.get("ss_network_dim") and not ranks:
        with contextlib.suppress(ValueError):
            ranks[int(meta["ss_network_dim"])] += 1
    if meta.get("ss_network_alpha") and not alphas:
        with contextlib.suppress(ValueError):
            alphas[_round(float(meta["ss_network_alpha"]))] += 1
    if unknown:
        notes.append(f"{unknown} tensor name(s) are not part of a Wan LoRA layout the studio knows.")
    if layout == "unknown":
        notes.append("No tensor of this file looks like a Wan LoRA.")

    expert: Expert | None = expert_from_name(path.stem)
    source = "file name" if expert else None
    if expert is None:
        expert = _expert_from_metadata(meta)
        source = "metadata" if expert else None
    experts_in_file = sorted({p.expert for p in parsed if p.expert}, key=("high", "low").index)
    if experts_in_file:  # the keys say it: one half only, or both (then the file is for both experts)
        expert = experts_in_file[0] if len(experts_in_file) == 1 else None
        source = "keys" if expert else None
        notes.append(
            "It holds both experts in one file (transformer_1 = high noise, transformer_2 = low noise): "
            "each half lands on its own expert."
            if len(experts_in_file) == 2
            else f"It holds only the {expert}-noise half of a two-expert (ai-toolkit) file."
        )
    sibling_hint, pair_file = _sibling_hint(path) if not experts_in_file else (None, None)
    if expert is None and sibling_hint is not None:
        expert, source = sibling_hint, "sibling file"
    task = task_from_name(path.stem) or _task_from_metadata(meta) or ("i2v" if image_attention else None)

    return LoraInfo(
        path=str(path),
        file_name=path.name,
        file_size=header.file_size,
        sha256=sha256,
        layout=layout,
        layout_label=LAYOUT_LABELS[layout],
        naming=naming,  # type: ignore[arg-type]
        key_prefix=prefix,
        dora=any(p.param in ("dora_scale", "lora_magnitude_vector") for p in parsed),
        has_diff=any(p.param == "diff" and p.kind not in PARAMETER_KINDS for p in parsed),
        has_diff_b=diff_b_modules > 0,
        diff_b_partial=0 < diff_b_modules < weight_modules,
        num_tensors=len(header.tensors),
        num_modules=lora_modules,
        unknown_keys=unknown,
        dtypes=sorted({t.dtype for t in header.tensors.values()}),
        rank=ranks.most_common(1)[0][0] if ranks else None,
        ranks=sorted(ranks),
        alpha=alphas.most_common(1)[0][0] if alphas else None,
        alphas=sorted(alphas),
        module_kinds=sorted({kinds[m] for m in modules if kinds[m] != "other"}),
        num_blocks=len(blocks),
        max_block=max(blocks) if blocks else None,
        block_modules=dict(sorted(block_modules.items())),
        kind_modules=dict(sorted(kind_modules.items())),
        top_modules=sorted(top_modules),
        model_dim=model_dim,
        ffn_dim=ffn_dims.most_common(1)[0][0] if ffn_dims else None,
        image_attention=image_attention,
        task=task,
        base_model=model_name_for_dim(model_dim, image_attention=image_attention),
        expert_hint=expert,
        expert_hint_source=source,  # type: ignore[arg-type]
        pair_file=pair_file,
        experts_in_file=experts_in_file,
        title=title,
        trigger_words=triggers,
        tags=tags,
        training=training,
        notes=notes,
    )


def alpha_keys(header: SafetensorsHeader) -> list[str]:
    """The names of the small ``alpha`` tensors worth reading for inspection."""
    names = [k for k, t in header.tensors.items() if k.endswith(".alpha") and t.numel <= 16]
    return names[:_MAX_ALPHA_READS]


def inspect_lora(
    path: str | Path, *, cache_dir: str | Path | None = None, hash_file: bool = True
) -> LoraInfo:
    """Inspect a LoRA file from its header (and ``alpha`` scalars); tensor data is not read.

    ``hash_file`` computes the file's sha256 (which does read the whole file once);
    with ``cache_dir`` the digest is cached by (resolved path, size, mtime_ns), so
    re-inspecting an unchanged file does not hash it again.
    """
    path = Path(path)
    header = read_header(path)
    scalars = read_tensors(path, header, alpha_keys(header), max_bytes=128)
    sha = file_sha256(path, cache_dir=cache_dir) if hash_file else None
    return summarise(path, header, scalars, sha256=sha)


def inspect_many(paths: Iterable[str | Path], *, cache_dir: str | Path | None = None) -> list[LoraInfo]:
    """Inspect several files (a convenience for the library view)."""
    return [inspect_lora(p, cache_dir=cache_dir) for p in paths]
