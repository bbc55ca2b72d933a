"""Wan2GP LoRA presets (``.lset``) and settings files → the studio's schedules.

A ``.lset`` file is JSON: ``{"loras": [file names or URLs], "loras_mult": "…", "prompt": "…",
"full_prompt": bool}`` (a WanGP settings file says ``activated_loras`` and ``loras_multipliers``).
The multipliers string holds one value per LoRA, separated by spaces or new lines (``#``
lines are comments, ``|`` separates accelerator LoRAs and counts as a space); ``;`` splits a
value into phases (2 for Wan2.2: high-noise ; low-noise) and ``,`` inside a phase splits that
phase's steps into equal blocks, each value held (``0.9,0.8;1.2,1.1,1``). A ``,`` list without
``;`` spans the whole run. A LoRA without a value gets 1.

Blocks are cut exactly as WanGP does (its ``expand_one``: step *j* of a phase of *n* steps
takes value ``⌊Σ len/n⌋``, accumulated in floats), so the per-step weights are the same.
Constant phases become a constant weight per expert (they fit any step count); block lists
become per-step lists over the whole run, which need the run's step count and the number of
high-noise steps, both stored in the preset's settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from studio.errors import ValidationError
from studio.stack import schedule as S

Phase = float | tuple[float, ...]


@dataclass(frozen=True)
class Multiplier:
    """One LoRA's WanGP multiplier: one phase (shared by the whole run) or two (high ; low)."""

    phases: tuple[Phase, ...]

    @property
    def shared(self) -> bool:
        return len(self.phases) == 1

    @property
    def has_blocks(self) -> bool:
        return any(isinstance(p, tuple) for p in self.phases)

    @property
    def phase_blocks(self) -> bool:
        """Block lists inside a high/low phase: their steps depend on where the experts switch."""
        return not self.shared and self.has_blocks


def _tokens(value: str | Sequence[str | float]) -> list[str | float]:
    if isinstance(value, (list, tuple)):
        return [v.strip(" \r\n") if isinstance(v, str) else v for v in value]
    lines = [line.strip() for line in str(value).strip(" \r\n").replace("\r", "").split("\n")]
    text = " ".join(line for line in lines if line and not line.startswith("#"))
    return [t for t in text.replace("|", " ").split(" ") if t]


def _float(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(f"{where}: {text!r} is not a number.") from None
    try:
        return S.parse(value).value  # the studio's weight range
    except S.ScheduleError as exc:
        raise ValidationError(f"{where}: {exc}.") from None


def _phase(text: str, where: str) -> Phase:
    if "," in text:
        values = tuple(_float(v, where) for v in text.split(","))
        return values if len(values) > 1 else values[0]
    return _float(text, where)


def parse_multipliers(
    value: str | Sequence[str | float], names: Sequence[str]
) -> tuple[list[Multiplier], list[str]]:
    """One :class:`Multiplier` per LoRA of ``names`` (1 where none is given), and notes."""
    notes: list[str] = []
    tokens = _tokens(value or "")
    if len(tokens) > len(names):
        notes.append(
            f"The multipliers list {len(tokens)} values for {len(names)} LoRAs; the extra ones were ignored "
            "(as WanGP does)."
        )
    out = []
    for i, name in enumerate(names):
        where = f"Multiplier {i + 1} (for {name})"
        if i >= len(tokens):
            out.append(Multiplier((1.0,)))
            continue
        token = tokens[i]
        if not isinstance(token, str):
            out.append(Multiplier((_float(str(token), where),)))
            continue
        phases = token.split(";")
        if len(phases) > 2:
            raise ValidationError(
                f"{where}: {token!r} has {len(phases)} phases (WanGP's 3 guidance phases); the studio runs one "
                "phase per expert, so write two (HIGH;LOW), or give per-step lists in the studio's editor."
            )
        out.append(Multiplier(tuple(_phase(p, where) for p in phases)))
    return out, notes


def expand(values: Phase, count: int) -> list[float]:
    """WanGP's ``expand_one``: ``values`` held in equal blocks over ``count`` steps."""
    values = values if isinstance(values, tuple) else (values,)
    out: list[float] = []
    increment = len(values) / count if count > 0 else 0.0
    position = 0.0
    for _ in range(max(0, count)):
        out.append(values[int(position)])
        position += increment
    return out


def expert_schedules(multiplier: Multiplier, *, steps: int, high_steps: int) -> tuple[str, str]:
    """The (high, low) schedule texts giving the same weight at every step as WanGP would."""
    if multiplier.shared:
        (phase,) = multiplier.phases
        text = (
            S.fmt(phase) if not isinstance(phase, tuple) else ",".join(S.fmt(v) for v in expand(phase, steps))
        )
        return text, text
    high, low = multiplier.phases
    low_steps = steps - high_steps

    def _one(phase: Phase, before: int, count: int, after: int) -> str:
        if not isinstance(phase, tuple):
            return S.fmt(phase)  # constant on this expert: the other expert's steps don't matter
        values = [0.0] * before + expand(phase, count) + [0.0] * after
        return ",".join(S.fmt(v) for v in values)

    return _one(high, 0, high_steps, low_steps), _one(low, high_steps, low_steps, 0)


# --------------------------------------------------------------------------- the file
LORA_KEYS = ("loras", "activated_loras")
MULTIPLIER_KEYS = ("loras_mult", "loras_multipliers")
SETTING_KEYS = {  # WanGP settings that are studio render settings
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "guidance2_scale": "guidance_low",
    "flow_shift": "shift",
    "negative_prompt": "negative_prompt",
}
_HF_URL = re.compile(r"^https://huggingface\.co/([^/]+/[^/]+)/(?:resolve|blob)/([^/]+)/(.+)$")


def is_lset(data: Any) -> bool:
    """Whether ``data`` (parsed JSON) looks like a WanGP ``.lset`` or settings file with LoRAs."""
    if not isinstance(data, dict) or "entries" in data or "kind" in data:
        return False
    loras = next((data[k] for k in LORA_KEYS if k in data), None)
    has_mult = any(k in data for k in MULTIPLIER_KEYS) or "activated_loras" in data
    return isinstance(loras, list) and all(isinstance(x, str) for x in loras) and has_mult


@dataclass(frozen=True)
class RunSteps:
    """The run the imported weights are laid out for: its step count and where the experts switch.

    ``high_steps_for(steps, shift)`` gives the number of high-noise steps the studio's split
    has for that run (from the real scheduler timesteps, :meth:`PipelineManager.split`).
    """

    steps: int
    high_steps_for: Callable[[int, float | None], int]


@dataclass
class LsetEntries:
    """What a WanGP file becomes, before the LoRA paths are resolved against the LoRA folders."""

    entries: list[dict[str, Any]]  # preset entries, with "file" (a local name) or a Hub source
    settings: dict[str, Any]
    notes: list[str]
    prompt: str


def _source(text: str, notes: list[str]) -> dict[str, Any]:
    match = _HF_URL.match(text.strip())
    if match:
        repo, revision, file = match.groups()
        return {"repo": repo, "file": unquote(file), "revision": revision}
    if "://" in text:
        name = PurePosixPath(unquote(urlparse(text).path)).name
        notes.append(f"{text} is a download link the studio cannot follow; put {name} in a LoRA folder.")
        return {"file": name}
    return {"file": text}


def lset_entries(data: dict[str, Any], *, run: RunSteps | None) -> LsetEntries:
    """The entries and settings of a WanGP ``.lset`` / settings file (see the module doc)."""
    notes: list[str] = []
    loras = next(data[k] for k in LORA_KEYS if k in data)
    if not loras:
        raise ValidationError("The Wan2GP file lists no LoRAs; there is nothing to import.")
    raw = next((data[k] for k in MULTIPLIER_KEYS if k in data), "")
    if not isinstance(raw, (str, list)):
        raise ValidationError("The Wan2GP multipliers must be text such as '1;0 0.8'.")
    names = [PurePosixPath(unquote(urlparse(x).path)).name if "://" in x else x for x in loras]
    multipliers, more = parse_multipliers(raw, names)
    notes += more
    settings: dict[str, Any] = {}
    for key, ours in SETTING_KEYS.items():
        if data.get(key) is not None:
            settings[ours] = data[key]
    known = {*LORA_KEYS, *MULTIPLIER_KEYS, *SETTING_KEYS, "prompt", "full_prompt"}
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        notes.append("Not imported (the studio has no such setting): " + ", ".join(unknown) + ".")
    steps = high = None
    if any(m.has_blocks for m in multipliers):
        if run is None and "steps" not in settings:
            raise ValidationError(
                "The Wan2GP multipliers change within the run (',' lists); give the step count to lay them out."
            )
        steps = int(settings.get("steps") or run.steps)
        settings["steps"] = steps
    if any(m.phase_blocks for m in multipliers):
        if run is None:
            raise ValidationError(
                "Lists inside a phase need the model's expert split; import with a model loaded."
            )
        high = run.high_steps_for(steps, settings.get("shift"))
        settings["high_steps"] = high
        notes.append(
            f"Per-phase lists are laid out for {steps} steps with {high} on the high-noise expert; the preset "
            "fixes both (Wan2GP switches where its own threshold says)."
        )
    entries = []
    for i, (text, name, multiplier) in enumerate(zip(loras, names, multipliers, strict=True)):
        high_text, low_text = (
            expert_schedules(multiplier, steps=steps or 1, high_steps=high or 0)
            if multiplier.has_blocks
            else (S.fmt(multiplier.phases[0]), S.fmt(multiplier.phases[-1]))
        )
        entry: dict[str, Any] = {"id": f"lora{i + 1}", "name": PurePosixPath(name).stem or f"LoRA {i + 1}"}
        source = _source(text, notes)
        for expert, schedule_text in (("high", high_text), ("low", low_text)):
            parsed = S.parse(schedule_text)
            entry[f"weight_{expert}"] = S.first_weight(parsed)
            if not S.is_constant(parsed):
                entry[f"schedule_{expert}"] = schedule_text
            entry[expert] = dict(source) if S.can_apply(parsed) else None
        if entry["high"] is None and entry["low"] is None:
            entry["high"] = entry["low"] = dict(source)
            entry["enabled"] = False
            notes.append(f"{name} has weight 0 throughout; it is imported switched off.")
        entries.append(entry)
    prompt = data.get("prompt") if isinstance(data.get("prompt"), str) else ""
    return LsetEntries(entries, settings, notes, prompt)
