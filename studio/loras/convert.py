"""Turning any supported Wan LoRA state dict into what diffusers 0.42.1 loads.

:func:`to_diffusers_state_dict` returns a PEFT-layout dict
(``transformer.blocks.0.attn1.to_q.lora_A.weight`` …) for
``pipe.load_lora_weights(state_dict, adapter_name=...)``, plus notes for the user.

Standard files go through diffusers' own public path,
``WanImageToVideoPipeline.lora_state_dict(dict)`` (given a dict it never unpickles):
original/ComfyUI keys (``diffusion_model.``, ``lora_A``/``lora_down``, ``.alpha``,
``.diff_b``) and complete musubi/Kohya files (``lora_unet_…`` + ``.alpha``). Before
that the studio fixes what diffusers does not accept:

* **keys without a prefix** get ``diffusion_model.`` (original names such as
  ``blocks.0.self_attn.q``) or ``transformer.`` (diffusers names such as
  ``blocks.0.attn1.to_q``);
* **partial musubi files** (diffusers requires every module) are renamed to the
  original layout first;
* **full weight diffs** (``.diff`` on a Linear, e.g. lightx2v's ``head.head.diff``)
  become an exact full-rank ``lora_A``/``lora_B`` pair; **bias-only** ``.diff_b``
  entries get zero factors so the bias still applies; ``.diff``/``.diff_b`` on norm
  layers are left out (diffusers ignores them too; in the published lightx2v files
  they are zero);
* modules diffusers' converter would choke on (e.g. a lone ``k_img`` without
  ``v_img``, or top-level modules in a file without blocks) are converted by the
  studio with the same maths (``scale = alpha / rank`` folded into ``lora_A``);
* **VideoX-Fun** keys (``lora_unet__blocks_0_…``, which diffusers refuses), **PEFT saves**
  of Wan's own module names (``base_model.model.blocks.0.ffn.0``) and **DiffSynth-Studio**
  keys (``….lora_A.default.weight``) are read as the original layout;
* **two-expert files** (ai-toolkit: ``diffusion_model.transformer_1.`` /
  ``transformer_2.``) are converted one half at a time: ``expert="high"`` takes the
  ``transformer_1`` half, ``"low"`` the ``transformer_2`` half;
* lightx2v's per-block **modulation diffs** (``diff_m``) are left out like norm diffs
  (diffusers does not apply them either).

Decisions (the README repeats them):

* **DoRA**: ``dora_scale`` tensors are *dropped with a note*, the rest loads as a
  plain LoRA. This is what diffusers itself does; it keeps the LoRA usable, but the
  result can differ from tools that apply DoRA's magnitude re-normalisation
  (ComfyUI), which the note says. PEFT-format DoRA (``lora_magnitude_vector``) is
  passed through: diffusers/peft apply it.
* **LyCORIS LoKr / LoHa** are *converted*, exactly, to plain LoRA factors, so they
  load, stack and take per-expert weights like any LoRA. LoHa ``(w1a·w1b) ⊙ (w2a·w2b)``
  becomes a rank ``r1·r2`` pair (row-wise Khatri–Rao products); LoKr
  ``kron(w1, w2)`` becomes a rank ``rank(w1)·rank(w2)`` pair
  (``kron(P1,P2) @ kron(Q1,Q2)``); when that rank reaches the layer's size the full
  delta is used instead. Scaling follows ComfyUI (``alpha / rank`` of the
  decomposed factor, 1 when there is none). Tucker (``lokr_t2``, ``hada_t1/t2``)
  and convolution modules are refused. The converted factors can be much larger
  than the file (rank 64·r on Wan 14B); conversions above ``max_bytes`` (8 GiB by
  default) are refused with a sentence.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from studio.errors import LoraFileError
from studio.loras.keys import (
    DIFFUSERS_CONVERTIBLE_BLOCK,
    DIFFUSERS_CONVERTIBLE_TOP,
    LOHA_PARAMS,
    LOKR_PARAMS,
    LORA_DOWN,
    LORA_UP,
    PARAMETER_KINDS,
    ParsedKey,
    SkippedKey,
    parse_key,
)
from studio.loras.lycoris import full_rank_pair, loha_pair, lokr_pair, lycoris_bytes

DEFAULT_MAX_BYTES = 8 * 1024**3
_TUCKER = {"lokr_t2", "hada_t1", "hada_t2", "lora_mid.weight"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")

InFeatures = Callable[[str], "int | None"]


@dataclass
class ConversionResult:
    """A PEFT-layout state dict plus what happened on the way.

    ``dropped`` lists tensors that carry weights but cannot be used (they count
    against the match); ``ignored`` lists tensors left out on purpose that change
    nothing or nearly nothing (norm diffs, DoRA magnitudes).
    """

    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    dropped: list[SkippedKey] = field(default_factory=list)
    ignored: list[SkippedKey] = field(default_factory=list)
    naming: str | None = None


@dataclass
class _Module:
    name: str  # in the file's naming (original dotted for original/musubi)
    parsed: ParsedKey
    params: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)

    def get(self, *names: str) -> torch.Tensor | None:
        for n in names:
            if n in self.params:
                return self.params[n][1]
        return None

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.params.values()]


def _diffusers_lora_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' public Wan conversion (a dict in, a PEFT-layout dict out; never unpickles)."""
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline.lora_state_dict(state_dict, use_safetensors=True)


def _out_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    for t in tensors:
        if t is not None and t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            return t.dtype
    return torch.bfloat16


def _peft_alpha_scales(metadata: Mapping[str, str] | None) -> Callable[[str, int], float] | None:
    """Per-module ``alpha / r`` from diffusers' ``lora_adapter_metadata`` (lost when loading from a dict)."""
    if not metadata or not metadata.get("lora_adapter_metadata"):
        return None
    try:
        config = json.loads(metadata["lora_adapter_metadata"])
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("transformer"), dict):  # some writers nest per component
        config = config["transformer"]
    lora_alpha = config.get("lora_alpha")
    if not isinstance(lora_alpha, int | float):
        return None
    patterns = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))

    def scale(module: str, rank: int) -> float:
        alpha = float(lora_alpha)
        for pattern, value in patterns.items():
            if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module or ""):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if rslora else rank)

    return scale


class _Converter:
    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None,
        in_features: InFeatures | None,
        max_bytes: int,
        expert: str | None = None,
    ) -> None:
        self.sd = state_dict
        self.expert = expert
        self.metadata = metadata
        self.in_features = in_features
        self.max_bytes = max_bytes
        self.result = ConversionResult(state_dict={})
        self.counts: dict[str, int] = {}
        self.manual_bytes = 0

    # -- bookkeeping -------------------------------------------------------------------
    def drop(self, keys, kind, reason, module=None) -> None:
        for k in keys:
            self.result.dropped.append(SkippedKey(key=k, module=module, kind=kind, reason=reason))

    def ignore(self, keys, reason, module=None) -> None:
        for k in keys:
            self.result.ignored.append(
                SkippedKey(key=k, module=module, kind="unsupported_layout", reason=reason)
            )

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    # -- main --------------------------------------------------------------------------
    def run(self) -> ConversionResult:
        parsed: list[ParsedKey] = []
        for key in self.sd:
            p = parse_key(key)
            if p is None:
                self.drop(
                    [key], "unsupported_layout", "not a tensor name of a Wan LoRA layout the studio knows"
                )
            else:
                parsed.append(p)
        parsed = self._one_expert(parsed)
        if not parsed:
            return self.result
        namings = {p.naming for p in parsed}
        if "diffusers" in namings and len(namings) > 1:
            raise LoraFileError(
                "This LoRA mixes diffusers-style key names (attn1.to_q) with original Wan names "
                "(self_attn.q), so the studio cannot tell how to load it; ask its author for a clean file."
            )
        naming = "diffusers" if namings == {"diffusers"} else "original"
        self.result.naming = "musubi" if namings == {"musubi"} else naming
        if any(p.prefix == "" for p in parsed):
            self.result.notes.append(
                "Its keys have no prefix; they were read as "
                + ("diffusers module names." if naming == "diffusers" else "original Wan module names.")
            )

        if namings == {"musubi"} and self._try_musubi(parsed):
            return self.result

        modules: dict[str, _Module] = {}
        for p in parsed:
            m = modules.setdefault(p.module, _Module(name=p.module, parsed=p))
            m.params[p.param] = (p.key, self.sd[p.key])

        standard: dict[str, _Module] = {}
        manual: dict[str, _Module] = {}
        for name, m in modules.items():
            route = self._classify(m, naming)
            if route == "standard":
                standard[name] = m
            elif route == "manual":
                manual[name] = m

        # diffusers converts k_img/v_img only when both appear, and needs at least one block.
        has_k_img = any(n.endswith("cross_attn.k_img") for n in standard)
        has_v_img = any(n.endswith("cross_attn.v_img") for n in standard)
        has_blocks = any(n.startswith("blocks.") for n in standard)
        for name in list(standard):
            lone_img = name.endswith(("k_img", "v_img")) and not (has_k_img and has_v_img)
            # diffusers ignores the alpha of modules outside the blocks (and then refuses the file)
            top_alpha = not name.startswith("blocks.") and "alpha" in standard[name].params
            if lone_img or top_alpha or not has_blocks:
                manual[name] = standard.pop(name)

        if standard:
            self._convert_standard(standard, manual)
        scales = _peft_alpha_scales(self.metadata) if naming == "diffusers" else None
        for m in manual.values():
            self._convert_manual(m, scales)

        self._finish()
        return self.result

    def _one_expert(self, parsed: list[ParsedKey]) -> list[ParsedKey]:
        """The keys of this expert's half of a two-expert file (all keys of any other file)."""
        halves = {p.expert for p in parsed if p.expert}
        if not halves:
            return parsed
        expert = self.expert
        if expert is None or expert not in halves:
            if expert is None and len(halves) == 1:
                expert = halves.pop()
            elif expert is None:  # no expert named (a one-expert model): the high-noise half
                expert = "high"
                self.result.notes.append(
                    "This file holds both experts' halves; only its high-noise half (transformer_1) was used."
                )
            else:
                return []
        return [p for p in parsed if p.expert in (expert, None)]

    def _try_musubi(self, parsed: list[ParsedKey]) -> bool:
        plain = {"lora_down.weight", "lora_up.weight", "alpha"}
        if not all(p.prefix == "lora_unet_" and p.param in plain for p in parsed):
            return False
        try:
            converted = _diffusers_lora_state_dict(dict(self.sd))
        except Exception:
            self.result.notes.append(
                "This musubi/Kohya file does not cover every module, so the studio renamed its keys "
                "before handing them to diffusers."
            )
            return False
        if not converted or not all(k.startswith("transformer.") for k in converted):
            return False
        self.result.state_dict = dict(converted)
        self._finish()
        return True

    def _classify(self, m: _Module, naming: str) -> str:
        """'standard' (diffusers converts it), 'manual' (the studio does), or '' (left out)."""
        p = m.parsed
        params = set(m.params)
        if p.kind in PARAMETER_KINDS:
            what = "a norm-layer diff" if p.kind == "norm" else "a modulation diff (diff_m)"
            self.ignore(m.keys, f"{what}; diffusers does not apply these", p.diffusers_module)
            self.count(p.kind, len(m.keys))
            return ""
        if p.diffusers_module is None:
            self.drop(m.keys, "unknown_module", "not a module of a Wan transformer", p.module)
            return ""
        if params & _TUCKER:
            self.drop(
                m.keys,
                "unsupported_layout",
                "Tucker-decomposed or convolution LoRA factors are not supported",
                p.diffusers_module,
            )
            return ""
        if "dora_scale" in params:
            key, _ = m.params.pop("dora_scale")
            self.ignore([key], "a DoRA magnitude; the LoRA is applied without it", p.diffusers_module)
            self.count("dora")
            params.discard("dora_scale")
        if "lora_magnitude_vector" in params and naming != "diffusers":
            key, _ = m.params.pop("lora_magnitude_vector")
            self.ignore([key], "a DoRA magnitude; the LoRA is applied without it", p.diffusers_module)
            self.count("dora")
            params.discard("lora_magnitude_vector")
        if not params or params == {"alpha"}:
            if params:
                self.drop(m.keys, "unsupported_layout", "an alpha without LoRA weights", p.diffusers_module)
            return ""
        if params & (set(LOKR_PARAMS) | set(LOHA_PARAMS)):
            return "manual"
        down, up = m.get(*LORA_DOWN), m.get(*LORA_UP)
        if (down is None) != (up is None):
            self.drop(
                m.keys,
                "unsupported_layout",
                "an incomplete LoRA pair (lora_A without lora_B or the other way round)",
                p.diffusers_module,
            )
            return ""
        if down is not None and up is not None:
            if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1] or down.shape[0] == 0:
                self.drop(
                    m.keys,
                    "unsupported_layout",
                    f"not a Linear LoRA pair (shapes {tuple(down.shape)} and {tuple(up.shape)})",
                    p.diffusers_module,
                )
                return ""
            if "diff" in m.params:
                key, _ = m.params.pop("diff")
                self.ignore([key], "a full weight diff next to a LoRA pair", p.diffusers_module)
            if (
                naming == "original"
                and self._diffusers_handles(m.name)
                and "lora_magnitude_vector" not in params
            ):
                return "standard"
            return "manual"
        diff = m.get("diff")
        if diff is not None and diff.ndim != 2:
            self.drop(m.keys, "unsupported_layout", "a weight diff of a non-Linear layer", p.diffusers_module)
            return ""
        return "manual"

    @staticmethod
    def _diffusers_handles(module: str) -> bool:
        mm = _BLOCK_RE.match(module)
        if mm:
            return mm.group(2) in DIFFUSERS_CONVERTIBLE_BLOCK
        return module in DIFFUSERS_CONVERTIBLE_TOP

    def _convert_standard(self, standard: dict[str, _Module], manual: dict[str, _Module]) -> None:
        sd: dict[str, torch.Tensor] = {}
        for name, m in standard.items():
            has_alpha = "alpha" in m.params
            down, up = m.get(*LORA_DOWN), m.get(*LORA_UP)
            assert down is not None and up is not None
            # diffusers scales some tensors in place; never touch the caller's tensors.
            sd[f"diffusion_model.{name}.lora_A.weight"] = down.clone() if has_alpha else down
            sd[f"diffusion_model.{name}.lora_B.weight"] = up.clone() if has_alpha else up
            if has_alpha:
                sd[f"diffusion_model.{name}.alpha"] = m.params["alpha"][1]
            if "diff_b" in m.params:
                sd[f"diffusion_model.{name}.diff_b"] = m.params["diff_b"][1]
        try:
            converted = _diffusers_lora_state_dict(sd)
        except Exception:
            # The studio's own conversion does the same maths; use it for all of them.
            manual.update(standard)
            return
        self.result.state_dict.update(converted)

    def _convert_manual(self, m: _Module, scales: Callable[[str, int], float] | None) -> None:
        p = m.parsed
        dmod = p.diffusers_module
        assert dmod is not None
        alpha_t = m.get("alpha")
        alpha = float(alpha_t.reshape(-1)[0].float()) if alpha_t is not None and alpha_t.numel() else None
        bias = m.get("diff_b", "lora_B.bias")
        down = up = None
        try:
            if any(k in m.params for k in LOKR_PARAMS) or any(k in m.params for k in LOHA_PARAMS):
                lokr = any(k in m.params for k in LOKR_PARAMS)
                dtype = _out_dtype(*(t for _k, t in m.params.values()))
                factors = {p: t for p, (_k, t) in m.params.items()}
                need = lycoris_bytes(factors, torch.tensor([], dtype=dtype).element_size())
                self._reserve(need)
                down, up = lokr_pair(factors, alpha) if lokr else loha_pair(factors, alpha)
                down, up = down.to(dtype), up.to(dtype)
                self.count("lokr" if lokr else "loha")
                self.counts.setdefault("lycoris_rank", 0)
                self.counts["lycoris_rank"] = max(self.counts["lycoris_rank"], down.shape[0])
            elif m.get(*LORA_DOWN) is not None:
                down, up = m.get(*LORA_DOWN), m.get(*LORA_UP)
                assert down is not None and up is not None
                rank = down.shape[0]
                scale = alpha / rank if alpha is not None else 1.0
                if scales is not None and alpha is None:
                    scale = scales(dmod, rank)
                if scale != 1.0:
                    down = (down.to(torch.float32) * scale).to(down.dtype)
            elif m.get("diff") is not None:
                diff = m.get("diff")
                assert diff is not None
                self._reserve(2 * diff.numel() * diff.element_size())
                down, up = full_rank_pair(diff)
                self.count("diff")
            elif bias is not None:
                n_in = self.in_features(dmod) if self.in_features is not None else None
                if n_in is None:
                    self.drop(
                        m.keys,
                        "unknown_module",
                        "a bias-only diff (diff_b) for a layer that is not a Linear of the loaded model",
                        dmod,
                    )
                    return
                down = torch.zeros(1, n_in, dtype=bias.dtype)
                up = torch.zeros(bias.shape[0], 1, dtype=bias.dtype)
                self.count("bias_only")
        except (ValueError, RuntimeError, IndexError):
            self.drop(m.keys, "unsupported_layout", "LoRA factors that do not fit together", dmod)
            return
        if down is None or up is None:
            return
        if bias is not None and (bias.ndim != 1 or bias.shape[0] != up.shape[0]):
            self.drop(m.keys, "unsupported_layout", "a diff_b whose size does not fit the layer", dmod)
            return
        prefix = f"transformer.{dmod}"
        sd = self.result.state_dict
        sd[f"{prefix}.lora_A.weight"] = down.contiguous()
        sd[f"{prefix}.lora_B.weight"] = up.contiguous()
        if bias is not None:
            sd[f"{prefix}.lora_B.bias"] = bias
        magnitude = m.get("lora_magnitude_vector")
        if magnitude is not None:
            sd[f"{prefix}.lora_magnitude_vector"] = magnitude

    def _reserve(self, nbytes: int) -> None:
        self.manual_bytes += nbytes
        if self.manual_bytes > self.max_bytes:
            raise LoraFileError(
                f"Converting this LoRA into plain LoRA factors would need more than "
                f"{self.max_bytes / 1024**3:.0f} GB of memory (LyCORIS or full weight diffs on a large model); "
                "use a plain LoRA version of it instead."
            )

    def _finish(self) -> None:
        notes = self.result.notes
        c = self.counts
        if c.get("dora"):
            notes.append(
                "DoRA magnitude tensors (dora_scale) were left out, as diffusers does: the LoRA is applied "
                "as a plain LoRA, so it can look a little different than in ComfyUI."
            )
        if c.get("norm"):
            notes.append(
                f"{c['norm']} norm-layer diff tensor(s) were left out: diffusers does not apply them "
                "(in the published lightx2v files they are zero)."
            )
        if c.get("modulation"):
            notes.append(
                f"{c['modulation']} modulation diff tensor(s) (diff_m) were left out: diffusers does not "
                "apply them."
            )
        if c.get("lokr") or c.get("loha"):
            kind = "LoKr" if c.get("lokr") else "LoHa"
            n = c.get("lokr", 0) + c.get("loha", 0)
            notes.append(
                f"{n} LyCORIS {kind} module(s) were converted exactly into plain LoRA factors "
                f"(rank up to {c.get('lycoris_rank', 0)})."
            )
        if c.get("diff"):
            notes.append(f"{c['diff']} full weight diff(s) (.diff) were turned into full-rank LoRA factors.")
        if c.get("bias_only"):
            notes.append(
                f"{c['bias_only']} bias-only diff(s) (.diff_b) were given zero LoRA factors so the bias applies."
            )


def convert_lora(
    state_dict: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    in_features: InFeatures | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expert: str | None = None,
) -> ConversionResult:
    """Convert a LoRA state dict to diffusers' PEFT layout, reporting what was left out.

    ``metadata`` is the file's safetensors metadata (diffusers-format files keep
    their ``lora_alpha`` there). ``in_features(module)`` tells the input size of a
    diffusers module of the target model; it is only needed for bias-only
    ``.diff_b`` entries (without it they are dropped). ``expert`` (``"high"``/``"low"``)
    picks the half of a two-expert file; other files ignore it.
    """
    return _Converter(state_dict, metadata, in_features, max_bytes, expert).run()


def to_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    in_features: InFeatures | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The PEFT-layout dict diffusers 0.42.1 loads, and notes (sentences) for the user."""
    result = convert_lora(state_dict, metadata=metadata, in_features=in_features)
    return result.state_dict, result.notes
