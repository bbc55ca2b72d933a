"""Will a LoRA land on this model? The match report, and the pipeline manager's entry point.

diffusers loads a LoRA whose keys match nothing with only a warning, and a LoRA
for another model size fails deep inside peft. :func:`match_report` checks a
converted (PEFT-layout) state dict against the actual transformer, module by
module: does the layer exist, is it a Linear, do the shapes fit. It says, per key,
why something will not land (unknown module, shape mismatch — naming the model size
the LoRA was made for — or unsupported layout).

:func:`prepare_lora` is what the pipeline manager calls: read the file safely,
inspect it, convert it, match it, drop what will not land (so diffusers does not
choke on it) and hand back a state dict for
``pipe.load_lora_weights(state_dict, adapter_name=..., load_into_transformer_2=...)``.
It raises :class:`~studio.errors.LoraFileError` with a sentence when the LoRA would
change nothing on the loaded model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from studio.errors import LoraFileError
from studio.loras.convert import convert_lora
from studio.loras.hashing import Sha256Cache, file_identity, remember_sha256
from studio.loras.inspect import LoraInfo, summarise
from studio.loras.keys import (
    SkippedKey,
    describe_dim,
    dim_votes,
    is_image_branch,
    leftovers_note,
    model_name_for_dim,
)
from studio.loras.safetensors_io import LoadedFile, read_file, read_header

_PEFT_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_STRIP_PARAM_RE = re.compile(
    r"[._](lora_[A-Za-z]+|alpha|diff_b|diff|dora_scale|lokr_\w+|hada_\w+)(\.weight|\.bias)?$"
)


class MatchReport(BaseModel):
    """How much of a LoRA lands on a model (JSON-serialisable).

    ``skipped`` lists every tensor that will not land, with a reason; ``ignored``
    lists tensors left out on purpose that change (almost) nothing — norm-layer
    diffs, DoRA magnitudes — and do not count against the match.
    """

    model_config = ConfigDict(extra="forbid")

    total_modules: int
    matched_modules: int
    percent: float
    matched: list[str] = []
    skipped: list[SkippedKey] = []
    ignored: list[SkippedKey] = []
    lora_dim: int | None = None
    model_dim: int | None = None
    notes: list[str] = []

    @property
    def skipped_modules(self) -> int:
        return self.total_modules - self.matched_modules

    @property
    def complete(self) -> bool:
        return self.total_modules > 0 and self.matched_modules == self.total_modules


@dataclass
class PreparedLora:
    """A LoRA ready for ``pipe.load_lora_weights(state_dict, adapter_name=..., **load_kwargs)``.

    ``needs_full_load`` is True when the file has ``diff_b`` (LoRA biases) on only some
    layers: diffusers' default ``low_cpu_mem_usage=True`` would leave the other layers'
    biases on the meta device, so pass ``low_cpu_mem_usage=False``. (The studio also
    gives those layers zero biases, so either way loads correctly.)
    """

    state_dict: dict[str, torch.Tensor]
    report: MatchReport
    info: LoraInfo
    needs_full_load: bool
    notes: list[str] = field(default_factory=list)

    @property
    def load_kwargs(self) -> dict[str, bool]:
        """Extra keyword arguments for ``load_lora_weights`` (``low_cpu_mem_usage=False`` when needed)."""
        return {"low_cpu_mem_usage": False} if self.needs_full_load else {}


def model_dim_of(transformer: torch.nn.Module) -> int | None:
    """The hidden size of a Wan transformer (heads × head_dim)."""
    config = getattr(transformer, "config", None)
    try:
        return int(config.num_attention_heads) * int(config.attention_head_dim)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return None


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def _find(transformer: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        found = transformer.get_submodule(name)
    except AttributeError:
        return None
    return found if isinstance(found, torch.nn.Module) else None


def _linear_io(module: torch.nn.Module) -> tuple[int, int] | None:
    base = _base_layer(module)
    in_f, out_f = getattr(base, "in_features", None), getattr(base, "out_features", None)
    if isinstance(in_f, int) and isinstance(out_f, int):
        return in_f, out_f
    return None


def in_features_lookup(transformer: torch.nn.Module):
    """``module name -> in_features`` of ``transformer``'s Linear layers (``None`` if absent)."""

    def lookup(name: str) -> int | None:
        found = _find(transformer, name)
        io = _linear_io(found) if found is not None else None
        return io[0] if io else None

    return lookup


def _split(key: str) -> tuple[str, str] | None:
    if not key.startswith("transformer."):
        return None
    rest = key[len("transformer.") :]
    for param in _PEFT_PARAMS:
        if rest.endswith("." + param):
            return rest[: -len(param) - 1], param
    return None


def lora_dim_of(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The hidden size a PEFT-layout Wan LoRA was made for, from its shapes."""
    votes: Counter[int] = Counter()
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        s = _split(key)
        if s:
            modules.setdefault(s[0], {})[s[1]] = t
    for name, params in modules.items():
        a, b = params.get("lora_A.weight"), params.get("lora_B.weight")
        fan_in = a.shape[1] if a is not None and a.ndim == 2 else None
        fan_out = b.shape[0] if b is not None and b.ndim == 2 else None
        for v in dim_votes(name, fan_in, fan_out):
            votes[v] += 1
    return votes.most_common(1)[0][0] if votes else None


def _unknown_reason(transformer: torch.nn.Module, module: str) -> str:
    m = _BLOCK_RE.match(module)
    blocks = getattr(transformer, "blocks", None)
    if m and blocks is not None and int(m.group(1)) >= len(blocks):
        return f"block {m.group(1)} does not exist: the loaded model has {len(blocks)} blocks"
    if module.endswith(("attn2.add_k_proj", "attn2.add_v_proj")):
        return (
            "Wan2.1 I2V image attention (k_img/v_img); the loaded model has no image attention, "
            "so this part of the LoRA is skipped"
        )
    if ".image_embedder." in module:
        return "the Wan2.1 I2V image embedder; the loaded model has none"
    return f"the loaded model has no layer named {module}"


def match_report(
    converted_state_dict: Mapping[str, torch.Tensor], transformer: torch.nn.Module
) -> MatchReport:
    """Check a PEFT-layout LoRA state dict against ``transformer``, module by module.

    Wan2.1 I2V image-branch modules (k_img/v_img, img_emb) on a model without them are
    leftovers, not misses: they go to ``ignored`` and do not count against the match.
    """
    model_dim = model_dim_of(transformer)
    lora_dim = lora_dim_of(converted_state_dict)
    image_attention = any(".add_k_proj." in k or ".add_v_proj." in k for k in converted_state_dict)
    size_hint = ""
    if lora_dim and model_dim and lora_dim != model_dim:
        size_hint = (
            f"; this LoRA is for {describe_dim(lora_dim, image_attention=image_attention)} "
            f"and the loaded model is {describe_dim(model_dim)}"
        )

    modules: dict[str, dict[str, str]] = {}
    skipped: list[SkippedKey] = []
    odd_modules: set[str] = set()
    for key in converted_state_dict:
        s = _split(key)
        if s is None:
            skipped.append(
                SkippedKey(
                    key=key,
                    kind="unsupported_layout",
                    reason="not a LoRA tensor for the video transformer (e.g. a text-encoder LoRA)",
                )
            )
            odd_modules.add(_STRIP_PARAM_RE.sub("", key))
            continue
        modules.setdefault(s[0], {})[s[1]] = key

    matched: list[str] = []
    ignored: list[SkippedKey] = []
    leftovers = 0
    for name, params in list(modules.items()):
        if is_image_branch(name) and _find(transformer, name) is None:
            leftovers += 1
            del modules[name]
            ignored += [
                SkippedKey(
                    key=key, module=name, kind="unknown_module", reason=_unknown_reason(transformer, name)
                )
                for key in params.values()
            ]
    for name, params in modules.items():

        def skip(kind: str, reason: str, params=params, name=name) -> None:
            for key in params.values():
                skipped.append(SkippedKey(key=key, module=name, kind=kind, reason=reason))  # type: ignore[arg-type]

        target = _find(transformer, name)
        if target is None:
            skip("unknown_module", _unknown_reason(transformer, name))
            continue
        io = _linear_io(target)
        if io is None:
            skip("unsupported_layout", f"{name} is not a Linear layer, so a LoRA cannot be applied to it")
            continue
        a_key, b_key = params.get("lora_A.weight"), params.get("lora_B.weight")
        if a_key is None or b_key is None:
            skip(
                "unsupported_layout", "an incomplete LoRA pair (lora_A without lora_B or the other way round)"
            )
            continue
        a, b = converted_state_dict[a_key], converted_state_dict[b_key]
        in_f, out_f = io
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            skip(
                "unsupported_layout",
                f"LoRA factors of shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit together",
            )
            continue
        if a.shape[1] != in_f or b.shape[0] != out_f:
            skip(
                "shape_mismatch",
                f"the LoRA is shaped for a {a.shape[1]}→{b.shape[0]} layer but the model's {name} is "
                f"{in_f}→{out_f}{size_hint}",
            )
            continue
        extra_bad = [
            p
            for p in ("lora_B.bias", "lora_magnitude_vector")
            if p in params and tuple(converted_state_dict[params[p]].shape) != (out_f,)
        ]
        if extra_bad:
            skip("shape_mismatch", f"its {extra_bad[0]} does not have the layer's {out_f} outputs{size_hint}")
            continue
        matched.append(name)

    total = len(modules) + len(odd_modules)
    percent = round(100.0 * len(matched) / total, 2) if total else 0.0
    return MatchReport(
        total_modules=total,
        matched_modules=len(matched),
        percent=percent,
        matched=sorted(matched),
        skipped=skipped,
        ignored=ignored,
        lora_dim=lora_dim,
        model_dim=model_dim,
        notes=[leftovers_note(leftovers)] if leftovers else [],
    )


def _module_of(skip: SkippedKey) -> str:
    return skip.module or _STRIP_PARAM_RE.sub("", skip.key)


def _nothing_matches(name: str, info: LoraInfo, report: MatchReport) -> LoraFileError:
    lora_dim = info.model_dim or report.lora_dim
    model_dim = report.model_dim
    model_name = model_name_for_dim(model_dim) or "the loaded model"
    if lora_dim and model_dim and lora_dim != model_dim:
        return LoraFileError(
            f"{name} would change nothing on this model: it is a LoRA for "
            f"{describe_dim(lora_dim, image_attention=info.image_attention)} but the loaded model has dim "
            f"{model_dim} ({model_name}). Choose a LoRA made for {model_name}, or load the model this LoRA "
            "was made for."
        )
    if report.total_modules == 0 and any(is_image_branch(_module_of(s)) for s in report.ignored):
        return LoraFileError(
            f"{name} would change nothing on this model: it only targets Wan2.1 I2V image attention "
            "(k_img/v_img, img_emb), which the loaded model does not have. Choose a LoRA made for "
            f"{model_name}."
        )
    if report.total_modules == 0:
        return LoraFileError(
            f"{name} would change nothing on this model: it holds no LoRA weights the studio can apply "
            f"({info.layout_label}). Check that it is a LoRA for Wan."
        )
    first = report.skipped[0].reason if report.skipped else "no layer fits"
    what = (
        "its only LoRA module does not"
        if report.total_modules == 1
        else (f"none of its {report.total_modules} LoRA modules")
    )
    return LoraFileError(
        f"{name} would change nothing on this model: {what} fit the loaded model "
        f"({first}). Check that it was made for {model_name}."
    )


@dataclass
class LoraFile:
    """A LoRA file read once (tensors, inspection, sha256), ready to be prepared for one or two experts."""

    path: Path
    loaded: LoadedFile
    info: LoraInfo
    _prepared: dict = field(default_factory=dict)

    @property
    def two_experts(self) -> bool:
        """Whether the file holds a half per expert (ai-toolkit), so each expert needs its own preparation."""
        return len(self.info.experts_in_file) == 2

    def prepare(self, transformer: torch.nn.Module, expert: str | None = None) -> PreparedLora:
        """:func:`prepare_loaded` once per half: a two-expert file per ``expert``, any other file once."""
        half = expert if self.two_experts else None
        if half not in self._prepared:
            self._prepared[half] = prepare_loaded(self, transformer, expert=half)
        return self._prepared[half]


def read_lora(path: str | Path, *, cache_dir: str | Path | None = None, hash_file: bool = True) -> LoraFile:
    """Read a LoRA file once, safely, with its inspection (and sha256, cached in ``cache_dir``).

    Raises :class:`LoraFileError` when it cannot be read safely or is not a Wan LoRA at all.
    """
    path = Path(path)
    header = read_header(path)
    quick = summarise(path, header, {})
    if quick.layout == "unknown":
        example = next(iter(header.tensors), "none")
        raise LoraFileError(
            f"{path.name} does not look like a Wan LoRA: none of its {len(header.tensors)} tensor names is "
            f"one the studio knows (e.g. {example[:80]!r}). Check that it is a LoRA for Wan and not a full "
            "model or a LoRA for another model."
        )
    cached = Sha256Cache(cache_dir).get(path) if (cache_dir is not None and hash_file) else None
    identity = file_identity(path)
    loaded = read_file(path, want_sha256=hash_file and cached is None)
    sha = cached or loaded.sha256
    if loaded.sha256 and cache_dir is not None:
        remember_sha256(path, loaded.sha256, cache_dir=cache_dir, identity=identity)
    scalars = {k: t for k, t in loaded.tensors.items() if k.endswith(".alpha") and t.numel() <= 16}
    info = summarise(path, loaded.header, scalars, sha256=sha)
    return LoraFile(path=path, loaded=loaded, info=info)


def prepare_loaded(
    lora: LoraFile, transformer: torch.nn.Module, *, expert: str | None = None
) -> PreparedLora:
    """Convert and match a file read by :func:`read_lora` for ``transformer`` (see :func:`prepare_lora`)."""
    path, loaded, info = lora.path, lora.loaded, lora.info
    try:
        conversion = convert_lora(
            loaded.tensors,
            metadata=loaded.header.metadata,
            in_features=in_features_lookup(transformer),
            expert=expert,
        )
    except LoraFileError:
        raise
    except Exception as exc:  # a file we cannot make sense of must not take the studio down
        raise LoraFileError(
            f"{path.name} could not be converted for diffusers ({type(exc).__name__}: {str(exc)[:200]}); "
            "check that it is a LoRA for Wan, or try another version of it."
        ) from exc
    report = match_report(conversion.state_dict, transformer)
    dropped_modules = {_module_of(s) for s in conversion.dropped}
    total = report.total_modules + len(dropped_modules)
    report = report.model_copy(
        update={
            "total_modules": total,
            "percent": round(100.0 * report.matched_modules / total, 2) if total else 0.0,
            "skipped": [*conversion.dropped, *report.skipped],
            "ignored": [*conversion.ignored, *report.ignored],
            "notes": [*conversion.notes, *report.notes],
            "lora_dim": report.lora_dim or info.model_dim,
        }
    )
    if report.matched_modules == 0:
        if expert and info.experts_in_file and expert not in info.experts_in_file:
            raise LoraFileError(
                f"{path.name} holds only the {info.experts_in_file[0]}-noise half of a two-expert file, so it "
                f"would change nothing on the {expert}-noise expert; put it on the "
                f"{info.experts_in_file[0]}-noise expert."
            )
        raise _nothing_matches(path.name, info, report)

    keep = set(report.matched)
    state_dict: dict[str, torch.Tensor] = {}
    for key, tensor in conversion.state_dict.items():
        s = _split(key)
        if s is not None and s[0] in keep:
            state_dict[key] = tensor
    with_weights = {s[0] for k in state_dict if (s := _split(k)) and s[1] == "lora_B.weight"}
    with_bias = {s[0] for k in state_dict if (s := _split(k)) and s[1] == "lora_B.bias"}
    needs_full_load = bool(with_bias) and with_bias != with_weights
    if needs_full_load:
        # diff_b on only some layers: give the others zero biases, so no bias is left on the
        # meta device even if the caller keeps low_cpu_mem_usage=True (and diffusers does not
        # warn about missing keys).
        for module in sorted(with_weights - with_bias):
            up = state_dict[f"transformer.{module}.lora_B.weight"]
            state_dict[f"transformer.{module}.lora_B.bias"] = torch.zeros(up.shape[0], dtype=up.dtype)

    notes = list(report.notes)
    if report.matched_modules < report.total_modules:
        notes.append(
            f"{report.total_modules - report.matched_modules} of {report.total_modules} LoRA modules of "
            f"{path.name} do not fit the loaded model and were left out ({report.percent:g}% applied)."
        )
    return PreparedLora(
        state_dict=state_dict, report=report, info=info, needs_full_load=needs_full_load, notes=notes
    )


def prepare_lora(
    path: str | Path,
    transformer: torch.nn.Module,
    *,
    cache_dir: str | Path | None = None,
    hash_file: bool = True,
    expert: str | None = None,
) -> PreparedLora:
    """Read, inspect, convert and match a LoRA file for ``transformer``.

    Returns the PEFT-layout state dict with everything that would not land removed,
    the match report, the file's :class:`LoraInfo`, and ``needs_full_load`` (pass
    ``low_cpu_mem_usage=False`` to ``load_lora_weights``; see
    :attr:`PreparedLora.load_kwargs`). The file's sha256 is computed from the bytes
    read for loading (``hash_file``) and cached in ``cache_dir`` when given.
    ``expert`` (``"high"``/``"low"``) picks the half of a two-expert (ai-toolkit) file.
    Raises :class:`LoraFileError` when the file cannot be read safely or would
    change nothing on this model.
    """
    lora = read_lora(path, cache_dir=cache_dir, hash_file=hash_file)
    return prepare_loaded(lora, transformer, expert=expert)
