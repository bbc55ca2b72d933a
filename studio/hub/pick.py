"""Which file of a Hub repo a LoRA path means: the pure part of :mod:`studio.hub.resolve` (no network).

A repo holds several ``.safetensors`` files (I2V and T2V, high- and low-noise halves, several
reward models). :func:`pick` narrows them down in this order:

1. files that cannot be used are left out: a header that could not be read, or a badge of
   *incompatible* with the loaded model;
2. the **task**: when some files say they are for the loaded model's task (I2V vs T2V, from the
   file name or its metadata), files that say they are for the other task go;
3. the **expert** (``applies_to``): for one expert, the files marked for it (``high_noise`` /
   ``low_noise`` in the name or metadata, the half of a pair, or a two-expert file), else the
   files marked for neither; for ``both``, a high/low pair when the repo has one, else a file
   marked for neither expert (or holding both halves);
4. the **name** as a hint when several remain (``hpsv2_quality`` → the HPS2.1 file, not MPS).

One option left is the answer; none or several is a :class:`~studio.errors.LoraFileError` that
lists the candidates and how to name one (``owner/name/file.safetensors``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from studio.errors import LoraFileError, ValidationError
from studio.loras.compat import Compat
from studio.loras.inspect import LoraInfo
from studio.loras.keys import Expert
from studio.loras.names import task_from_name

Task = Literal["i2v", "t2v"]
EXPERT_WORDS = {"high": "high-noise", "low": "low-noise"}
# ``applies_to`` as the guide writes it (and the short forms) -> the experts it names.
APPLIES_TO: dict[str, tuple[Expert, ...]] = {
    "both": ("high", "low"),
    "high_noise": ("high",),
    "low_noise": ("low",),
    "high": ("high",),
    "low": ("low",),
}
# Words of a LoRA name that say nothing about which file is meant.
_STOP_WORDS = {
    "lora", "loras", "wan", "high", "low", "noise", "i", "v", "t", "b", "ti", "a", "the", "and", "of", "for",
    "model", "safetensors", "fp", "bf", "rank", "step", "steps", "expert", "experts", "both",
}  # fmt: skip


def experts_for(applies_to: str) -> tuple[Expert, ...]:
    """The experts ``applies_to`` names; a :class:`ValidationError` sentence for anything else."""
    key = applies_to.strip().lower() if isinstance(applies_to, str) else applies_to
    if key not in APPLIES_TO:
        raise ValidationError(
            f"applies_to must be 'both', 'high_noise' or 'low_noise' (or 'high' / 'low'); got {applies_to!r}."
        )
    return APPLIES_TO[key]


@dataclass(frozen=True)
class Candidate:
    """One ``.safetensors`` file of a repo as the picking sees it."""

    file: str  # path in the repo
    info: LoraInfo | None = None
    error: str | None = None  # why its header could not be read
    compat: Compat | None = None  # its badge on the loaded model, when a model is known
    expert: Expert | None = None  # the expert it is for (name, metadata or its pair), None: both/unknown
    partner: str | None = None  # the other half of its high/low pair

    @property
    def task(self) -> Task | None:
        found = self.info.task if self.info is not None else None
        return found or task_from_name(PurePosixPath(self.file).stem)

    @property
    def two_experts(self) -> bool:
        return self.info is not None and len(self.info.experts_in_file) == 2


@dataclass(frozen=True)
class Fit:
    """What the chosen file has to fit: the loaded model's task, experts and transformer config."""

    task: Task | None = "i2v"  # the studio renders image-to-video; TI2V models take either
    experts: int = 2
    config: Mapping | None = None
    model_name: str | None = None

    def describe(self) -> str:
        task = {"i2v": "an I2V", "t2v": "a T2V"}.get(self.task or "", "the")
        return self.model_name or f"{task} model"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", text.lower())


def name_score(hint: str, file: str) -> int:
    """How many telling words of ``hint`` (a LoRA name) the file name shares (prefixes count: hpsv ~ hps)."""
    wanted = [w for w in _words(hint) if not w.isdigit() and w not in _STOP_WORDS and len(w) >= 2]
    have = [w for w in _words(PurePosixPath(file).stem) if not w.isdigit() and w not in _STOP_WORDS]
    score = 0
    for w in dict.fromkeys(wanted):
        if any(w == h or (min(len(w), len(h)) >= 3 and (w.startswith(h) or h.startswith(w))) for h in have):
            score += 1
    return score


def _describe(c: Candidate) -> str:
    marks = []
    if c.task:
        marks.append(c.task.upper())
    if c.two_experts:
        marks.append("both experts in one file")
    elif c.expert:
        marks.append(EXPERT_WORDS[c.expert])
    if c.error:
        marks.append("unreadable")
    elif c.compat is not None and not c.compat.ok:
        marks.append("does not fit the loaded model")
    return f"{c.file} ({', '.join(marks)})" if marks else c.file


def _listing(cands: Sequence[Candidate], limit: int = 6) -> str:
    shown = ", ".join(_describe(c) for c in cands[:limit])
    return shown + (f" and {len(cands) - limit} more" if len(cands) > limit else "")


def _for_what(experts: tuple[Expert, ...], fit: Fit) -> str:
    if len(experts) == 2:
        where = "both experts (a high/low pair or one file for both)" if fit.experts == 2 else "the model"
    else:
        where = f"the {EXPERT_WORDS[experts[0]]} expert"
    return f"{where} of {fit.describe()}"


Option = dict  # expert -> file in the repo


def _options(usable: list[Candidate], experts: tuple[Expert, ...], fit: Fit) -> list[Option]:
    by_file = {c.file: c for c in usable}
    if len(experts) == 2 and fit.experts == 2:
        pairs = [
            {"high": c.file, "low": c.partner}
            for c in usable
            if c.expert == "high" and c.partner in by_file and by_file[c.partner].expert == "low"
        ]
        if pairs:
            return pairs
        return [{"high": c.file, "low": c.file} for c in usable if c.expert is None or c.two_experts]
    expert: Expert = experts[0] if len(experts) == 1 else "high"
    marked = [c for c in usable if c.expert == expert or (c.two_experts and expert in c.info.experts_in_file)]
    if not marked and len(experts) == 2:  # both, on a one-expert model: a high-noise file will do
        marked = [c for c in usable if c.expert is None]
    chosen = marked or [c for c in usable if c.expert is None and not c.two_experts]
    return [{e: c.file for e in experts} for c in chosen]


def pick(
    repo: str,
    candidates: Sequence[Candidate],
    experts: tuple[Expert, ...],
    *,
    name: str | None = None,
    fit: Fit = Fit(),
) -> tuple[Option, list[str]]:
    """The file(s) of ``repo`` for ``experts`` (expert -> file) and notes; a sentence when it cannot tell."""
    how = f"name one as {repo}/FILE.safetensors"
    if not candidates:
        raise LoraFileError(f"{repo} has no .safetensors files, so it holds no LoRA the studio can load.")
    usable = [c for c in candidates if c.info is not None and (c.compat is None or c.compat.ok)]
    notes: list[str] = []
    if fit.task and any(c.task == fit.task for c in usable):
        usable = [c for c in usable if c.task in (None, fit.task)]
    options = _options(usable, experts, fit) if usable else []
    if len(options) > 1 and name:
        scores = [max(name_score(name, f) for f in set(o.values())) for o in options]
        best = max(scores)
        if best > 0:
            options = [o for o, s in zip(options, scores, strict=True) if s == best]
            if len(options) == 1:
                notes.append(f"{name!r} named {', '.join(sorted(set(options[0].values())))} among the files.")
    if len(options) == 1:
        return options[0], notes
    what = _for_what(experts, fit)
    if not options:
        raise LoraFileError(
            f"None of the {len(candidates)} .safetensors files of {repo} fits {what}: {_listing(candidates)}; "
            f"{how}."
        )
    shown = [" + ".join(dict.fromkeys(o.values())) for o in options]
    example = next(iter(options[0].values()))
    raise LoraFileError(
        f"{len(options)} files of {repo} fit {what}: {', '.join(shown[:6])}"
        f"{' …' if len(shown) > 6 else ''}. Name the one you want, e.g. {repo}/{example}"
        + (" (or give a name that tells them apart)." if not name else ".")
    )
