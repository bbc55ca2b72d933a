"""How library items look in the picker: a one-line label, a details card and the compatibility badge."""

from __future__ import annotations

import html

from studio.loras.compat import Compat
from studio.loras.library import LibraryItem

BADGE_TEXT = {"compatible": "compatible", "partial": "partial", "incompatible": "incompatible"}


def experts_text(item: LibraryItem) -> str:
    if item.kind == "pair":
        return "high + low pair"
    if item.expert:
        return f"{item.expert}-noise only"
    return "both experts"


def _size_text(num_bytes: int) -> str:
    if num_bytes >= 1_000_000_000:
        return f"{num_bytes / 1e9:.1f} GB"
    if num_bytes >= 1_000_000:
        return f"{num_bytes / 1e6:.0f} MB"
    return f"{num_bytes / 1e3:.0f} kB"


def choice_label(item: LibraryItem, compat: Compat) -> str:
    """One line for the dropdown: name · layout · base model · rank · experts · size [badge]."""
    if item.error:
        return f"{item.label} · unreadable [incompatible]"
    infos = item.infos
    first = infos[0]
    ranks = sorted({r for i in infos for r in (i.ranks or ([i.rank] if i.rank else []))})
    rank = f"r{'/'.join(map(str, ranks))}" if ranks else "r?"
    parts = [item.label, first.layout_label, first.base_model or "unknown base", rank, experts_text(item),
             _size_text(sum(i.file_size for i in infos))]  # fmt: skip
    return " · ".join(parts) + f" [{BADGE_TEXT[compat.level]}]"


def trigger_words(item: LibraryItem) -> list[str]:
    words: list[str] = []
    for info in item.infos:
        for word in info.trigger_words:
            if word not in words:
                words.append(word)
    return words


def details_html(item: LibraryItem, compat: Compat) -> str:
    """The card shown for the selected item; the badge's reason is spelled out (names are escaped)."""
    e = html.escape
    badge = f"<span class='lora-badge lora-badge-{compat.level}'>{e(BADGE_TEXT[compat.level])}"
    if compat.level == "partial":
        badge += f" · {compat.percent:.0f}%"
    badge += "</span>"
    rows = [("Name", item.label), ("Experts", experts_text(item))]
    if item.error:
        rows.append(("Problem", item.error))
    for info, role in zip(item.infos, ("high", "low") if item.kind == "pair" else ("",), strict=False):
        prefix = f"{role}-noise file " if role else ""
        rows += [
            (f"{prefix}File".strip().capitalize(), info.file_name),
            ("Layout", info.layout_label),
            ("Base model", info.base_model or "unknown"),
            ("Rank / alpha", f"{info.rank or '?'} / {info.alpha if info.alpha is not None else '—'}"),
            ("Targets", ", ".join(info.module_kinds) or "—"),
            ("Blocks", str(info.num_blocks)),
            ("Size", _size_text(info.file_size)),
        ]
    words = trigger_words(item)
    if words:
        rows.append(("Trigger words", ", ".join(words)))
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{e(n)}</li>" for n in compat.notes)
    return (
        f"<div class='lora-card' data-level='{compat.level}'>{badge}"
        f"<div class='lora-reason'>{e(compat.reason)}</div>"
        f"<table>{body}</table>{f'<ul>{notes}</ul>' if notes else ''}</div>"
    )
