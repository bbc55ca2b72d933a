"""What a LoRA's file (or repo) name says: the expert (high/low noise) and the task (I2V/T2V).

Shared by the inspection (:mod:`studio.loras.inspect`), the library's pairing
(:mod:`studio.loras.library`) and the Hub's file picking, so every place reads a name
the same way.
"""

from __future__ import annotations

import re
from typing import Literal

from studio.loras.keys import Expert

# A high/low word in a file name, delimited by separators, digits, case changes or the ends.
_EXPERT_WORD_RE = re.compile(
    r"(?:^|(?<=[^A-Za-z])|(?<=[a-z0-9])(?=[A-Z]))"
    r"(?P<word>(?:high|low)(?:[_\- ]?noise)?|(?:HIGH|LOW)(?:[_\- ]?NOISE)?|(?:High|Low)(?:[_\- ]?Noise)?)"
    r"(?=$|[^A-Za-z]|[A-Z][a-z])"
)
# A one- or two-letter marker ("lora_H", "x_LN_v2") between separators.
_EXPERT_LETTER_RE = re.compile(r"(?:^|(?<=[_\-. ]))(?P<word>HN|LN|H|L)(?=$|[_\-. ])")


def _expert_words(text: str, *, letters_anywhere: bool = False) -> list[tuple[Expert, re.Match[str]]]:
    """High/low markers in ``text``; single letters count only at the end unless ``letters_anywhere``."""
    found: list[tuple[Expert, re.Match[str]]] = []
    for m in _EXPERT_WORD_RE.finditer(text):
        found.append(("high" if m.group("word")[0] in "hH" else "low", m))
    for m in _EXPERT_LETTER_RE.finditer(text):
        if m.start() > 0 and (letters_anywhere or m.end() == len(text)):
            found.append(("high" if m.group("word")[0] == "H" else "low", m))
    return found


def expert_from_name(name: str) -> Expert | None:
    """``'high'``/``'low'`` when a file name (without suffix) says which expert it is for."""
    kinds = {kind for kind, _ in _expert_words(name)}
    return kinds.pop() if len(kinds) == 1 else None


def _swap_word(word: str) -> str:
    table = {"high": "low", "low": "high", "HIGH": "LOW", "LOW": "HIGH", "High": "Low", "Low": "High"}
    for src, dst in table.items():
        if word.startswith(src):
            return dst + word[len(src) :]
    return {"H": "L", "L": "H", "HN": "LN", "LN": "HN"}.get(word, word)


def pair_candidates(name: str) -> list[tuple[Expert, str]]:
    """(this file's expert, the partner's name) for each high/low marker of ``name`` (suffix removed)."""
    out = []
    for kind, m in _expert_words(name, letters_anywhere=True):
        out.append((kind, name[: m.start()] + _swap_word(m.group("word")) + name[m.end() :]))
    return out


def expert_markers(name: str) -> list[tuple[Expert, int, int]]:
    """(expert, start, end) of each high/low marker in ``name``, in :func:`pair_candidates` order."""
    return [(kind, m.start(), m.end()) for kind, m in _expert_words(name, letters_anywhere=True)]


_TASK_RE = re.compile(r"(?:^|[^A-Za-z])(?P<task>ti2v|i2v|t2v|inp|flf2v)(?=$|[^A-Za-z])", re.I)


def task_from_name(name: str) -> Literal["i2v", "t2v"] | None:
    """``'i2v'``/``'t2v'`` when a file or repo name says which Wan task it is for (TI2V: neither)."""
    found = set()
    for m in _TASK_RE.finditer(name):
        word = m.group("task").lower()
        if word == "t2v":
            found.add("t2v")
        elif word != "ti2v":  # i2v, InP (VideoX-Fun's image-conditioned models), FLF2V
            found.add("i2v")
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]
