"""Recipes: the render settings a speed (step-distilled) LoRA was made for.

Speed LoRAs such as lightx2v / Wan2.2-Lightning / CausVid are distilled to render in
about 4 steps without classifier-free guidance. With the base model's 40 steps and CFG
on, they over-cook the video and waste ten times the time. :func:`speed_loras` finds
them in a stack (by file name, Hub repo, entry name or what the file's header says),
:func:`recipe_for` offers their recipe (4 steps, guidance 1.0 on both experts, shift
5.0) for a one-click :meth:`Recipe.apply`, and :func:`check_settings` returns warning
sentences when the settings contradict it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from studio.stack.schema import EXPERTS, LoraSource, RenderSettings, Stack, StackEntry

__all__ = [
    "SPEED_RECIPE",
    "Recipe",
    "SpeedLora",
    "check_settings",
    "recipe_for",
    "speed_loras",
]

# Words that mark a step-distilled LoRA, matched in file names, repo ids, entry names and headers.
_SPEED_RE = re.compile(
    r"(lightx2v|light[\s_-]?x2v|lightning|distill|causvid|accvid|fastwan|turbo|self[\s_-]?forcing|"
    r"(?<![0-9])[48][\s_-]?steps?(?![a-z])|step[\s_-]?distill)",
    re.IGNORECASE,
)
MAX_SPEED_STEPS = 8  # 4-step LoRAs still work at 6-8; beyond that they over-cook


@dataclass(frozen=True)
class Recipe:
    """Settings a kind of LoRA needs; :meth:`apply` is the one-click "use the recipe"."""

    name: str
    steps: int
    guidance: float
    guidance_low: float
    shift: float
    note: str

    def apply(self, settings: RenderSettings) -> RenderSettings:
        return RenderSettings.model_validate(
            {
                **settings.model_dump(),
                "steps": self.steps,
                "guidance": self.guidance,
                "guidance_low": self.guidance_low,
                "shift": self.shift,
            }
        )

    def matches(self, settings: RenderSettings) -> bool:
        return (
            settings.steps == self.steps
            and settings.guidance == self.guidance
            and settings.effective_guidance_low == self.guidance_low
            and settings.shift == self.shift
        )

    def label(self) -> str:
        return f"{self.steps} steps, guidance {self.guidance:g}, shift {self.shift:g}"


SPEED_RECIPE = Recipe(
    name="speed LoRA recipe",
    steps=4,
    guidance=1.0,
    guidance_low=1.0,
    shift=5.0,
    note="Step-distilled (speed) LoRAs are made for 4 steps without CFG (guidance 1.0) at shift 5.0.",
)


@dataclass(frozen=True)
class SpeedLora:
    """A stack entry recognised as a speed LoRA, and why."""

    entry_id: str
    name: str
    experts: list[str]  # the experts it is active on
    reason: str  # e.g. "file name contains 'lightx2v'"


def _header_texts(info: Any) -> list[tuple[str, str]]:
    """(where, text) pairs from a LoraInfo-like object or dict (title, tags, base model, notes)."""
    if info is None:
        return []
    get = info.get if isinstance(info, Mapping) else lambda k, d=None: getattr(info, k, d)
    texts = []
    for key in ("title", "base_model", "file_name"):
        value = get(key, None)
        if value:
            texts.append(("metadata", str(value)))
    for key in ("tags", "trigger_words"):
        for value in get(key, None) or []:
            texts.append(("metadata", str(value)))
    for key, value in (get("training", None) or {}).items():
        if key in {"ss_output_name", "ss_training_comment", "modelspec.title", "modelspec.description"}:
            texts.append(("metadata", str(value)))
    return texts


def _source_texts(source: LoraSource | None) -> list[tuple[str, str]]:
    if source is None:
        return []
    if source.is_hub:
        return [("Hub repo", str(source.repo)), ("file name", PurePosixPath(str(source.file)).name)]
    return [("file name", PurePosixPath(str(source.path).replace("\\", "/")).name)]


def _reason(entry: StackEntry, info: Any) -> str | None:
    texts = [("name", entry.name)]
    for expert in EXPERTS:
        texts += _source_texts(entry.source(expert))
    texts += _header_texts(info)
    for where, text in texts:
        match = _SPEED_RE.search(text)
        if match:
            return f"{where} contains {match.group(0)!r}"
    return None


InfoLookup = Mapping[str, Any] | Callable[[StackEntry], Any] | None


def _info_for(entry: StackEntry, infos: InfoLookup) -> Any:
    if infos is None:
        return None
    if callable(infos):
        return infos(entry)
    return infos.get(entry.id)


def speed_loras(stack: Stack, infos: InfoLookup = None) -> list[SpeedLora]:
    """The active entries of ``stack`` that are speed (step-distilled) LoRAs.

    ``infos`` optionally gives header facts per entry (a mapping from entry id, or a
    function of the entry, returning a :class:`~studio.loras.inspect.LoraInfo` or a dict
    with ``title``/``tags``/``training``...), so a renamed file is still recognised.
    """
    found = []
    for entry in stack.active():
        reason = _reason(entry, _info_for(entry, infos))
        if reason is not None:
            found.append(SpeedLora(entry.id, entry.name, list(entry.applies_to()), reason))
    return found


def recipe_for(stack: Stack, infos: InfoLookup = None) -> Recipe | None:
    """The recipe to offer for ``stack`` (the speed recipe when it holds a speed LoRA), else None."""
    return SPEED_RECIPE if speed_loras(stack, infos) else None


def check_settings(
    stack: Stack, settings: RenderSettings, infos: InfoLookup = None, *, experts: Iterable[str] = EXPERTS
) -> list[str]:
    """Warnings (sentences) where ``settings`` contradict the stack's recipe; empty when they agree.

    ``experts`` are the model's experts (``("high",)`` for a one-expert model): a speed
    LoRA missing on one of them is only reported for two-expert models.
    """
    speed = speed_loras(stack, infos)
    recipe = SPEED_RECIPE
    if not speed:
        if settings.steps <= 8 and settings.guidance <= 1.0:
            return [
                f"{settings.steps} steps without CFG need a speed LoRA (e.g. lightx2v 4-step); "
                "without one the video comes out blurry. Add one, or use the model's usual steps and guidance."
            ]
        return []
    names = ", ".join(s.name for s in speed)
    warnings = []
    if settings.steps > MAX_SPEED_STEPS:
        warnings.append(
            f"{names} is a speed LoRA made for {recipe.steps} steps, but {settings.steps} steps are set: "
            f"the video over-sharpens and the render takes about {settings.steps / recipe.steps:.0f}× longer. "
            f"Use the recipe ({recipe.label()})."
        )
    cfg = [(label, value) for label, value in (("high-noise", settings.guidance),) if value > 1.0]
    low = settings.effective_guidance_low
    if low > 1.0 and "low" in set(experts):
        cfg.append(("low-noise", low))
    if cfg:
        detail = ", ".join(f"{label} guidance {value:g}" for label, value in cfg)
        warnings.append(
            f"CFG is on ({detail}) with the speed LoRA {names}: it was distilled without CFG, so guidance above "
            "1.0 burns colours and doubles the time per step. Set guidance to 1.0."
        )
    if abs(settings.shift - recipe.shift) > 1.0:
        warnings.append(
            f"Shift {settings.shift:g} with the speed LoRA {names}: its recipe uses shift {recipe.shift:g}, which "
            "also decides how its 4 steps split between the two experts."
        )
    model_experts = set(experts)
    if len(model_experts) > 1 and settings.steps <= MAX_SPEED_STEPS:
        covered = {expert for s in speed for expert in s.experts}
        for expert in sorted(model_experts - covered):
            other = "high-noise" if expert == "high" else "low-noise"
            warnings.append(
                f"The speed LoRA is not on the {other} expert: at {settings.steps} steps that expert renders "
                f"undistilled and blurs. Add the {other} file of the speed pair."
            )
    return warnings
