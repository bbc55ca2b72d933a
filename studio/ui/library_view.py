"""How library items look: the picker's one-line label, the library table's rows, a details card, the badge."""

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
    ranks = _ranks(item)
    rank = f"r{'/'.join(map(str, ranks))}" if ranks else "r?"
    parts = [item.label, first.layout_label, first.base_model or "unknown base", rank, experts_text(item),
             _size_text(sum(i.file_size for i in infos))]  # fmt: skip
    return " · ".join(parts) + f" [{BADGE_TEXT[compat.level]}]"


TABLE_HEADERS = ["Name", "Layout", "Base model", "Experts", "Rank", "Size (kB)", "Badge", "File"]
TABLE_TYPES = ["str", "str", "str", "str", "number", "number", "str", "str"]
TABLE_WIDTHS = ["15%", "12%", "13%", "12%", "7%", "8%", "11%", "22%"]  # room for each column's ⋮ menu


def _ranks(item: LibraryItem) -> list[int]:
    return sorted({r for i in item.infos for r in (i.ranks or ([i.rank] if i.rank else []))})


def badge_text(compat: Compat) -> str:
    text = BADGE_TEXT[compat.level]
    return f"{text} {compat.percent:.0f}%" if compat.level == "partial" else text


def table_row(item: LibraryItem, compat: Compat) -> list:
    """One row of the library table (see :data:`TABLE_HEADERS`); Rank is the largest, Size in kB."""
    files = item.rel_path or " + ".join(p for p in (item.high_rel_path, item.low_rel_path) if p)
    if item.error or not item.infos:
        return [item.label, "unreadable", "", experts_text(item), None, None, badge_text(compat), files]
    first = item.infos[0]
    ranks = _ranks(item)
    size_kb = round(sum(i.file_size for i in item.infos) / 1e3, 1)
    return [item.label, first.layout_label, first.base_model or "unknown", experts_text(item),
            ranks[-1] if ranks else None, size_kb, badge_text(compat), files]  # fmt: skip


def filter_rows(rows: list[tuple[list, str]], query: str | None) -> list[tuple[list, str]]:
    """The ``(row, item id)`` pairs whose cells contain every word of ``query`` (any case, any column)."""
    words = (query or "").lower().split()
    if not words:
        return list(rows)
    kept = []
    for row, item_id in rows:
        text = " ".join("" if cell is None else str(cell) for cell in row).lower()
        if all(word in text for word in words):
            kept.append((row, item_id))
    return kept


def trigger_words(item: LibraryItem) -> list[str]:
    words: list[str] = []
    for info in item.infos:
        for word in info.trigger_words:
            if word not in words:
                words.append(word)
    return words


DEMO_NOTE = "A demo file the studio built for the demo model (random weights, not a real style)."


def details_html(item: LibraryItem, compat: Compat, *, demo: bool = False) -> str:
    """The card shown for the selected item; the badge's reason is spelled out (names are escaped).

    ``demo``: the item is one of the studio's demo LoRAs (the card says so).
    """
    e = html.escape
    badge = f"<span class='lora-badge lora-badge-{compat.level}'>{e(BADGE_TEXT[compat.level])}"
    if compat.level == "partial":
        badge += f" · {compat.percent:.0f}%"
    badge += "</span>"
    if demo:
        badge += " <span class='lora-badge lora-badge-demo'>demo</span>"
    rows = [("Name", item.label), ("Experts", experts_text(item))]
    title = next((i.title for i in item.infos if i.title), None)
    if title:
        rows.append(("Title", title))
    if demo:
        rows.append(("Note", DEMO_NOTE))
    if item.error:
        files = item.rel_path or " + ".join(p for p in (item.high_rel_path, item.low_rel_path) if p)
        rows += [("File", files), ("Problem", item.error)]
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
