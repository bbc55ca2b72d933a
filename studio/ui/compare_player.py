"""The Compare tab's synchronized player: HTML for a ``gr.HTML`` and the script for the page head.

Gradio's HTML component does not run ``<script>`` tags, so the player's behaviour lives
in ``assets/compare.js``, put in the page head once by :func:`head_html` (passed to
``launch(head=...)``); it drives every player through event delegation. The videos
are served by Gradio's file route (``gradio_api/file=<absolute path>``), which serves
files under ``allowed_paths`` (the outputs folder): the URLs are relative, so they also
work when the app is mounted below a path prefix.

Every string that reaches the HTML (labels, file names, table cells) is escaped.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from studio.workflows.compare import DiffRow

SCRIPT_PATH = Path(__file__).resolve().parents[2] / "assets" / "compare.js"
FILE_ROUTE = "gradio_api/file="
RATES = (0.25, 0.5, 1.0)


def head_html() -> str:
    """What must go in the page head: the player's script (``launch(head=head_html())``)."""
    script = SCRIPT_PATH.read_text(encoding="utf-8")
    return f'<script id="studio-compare-js">\n{script}\n</script>'


def file_url(path: str | Path) -> str:
    """The URL Gradio serves ``path`` at (a file under ``allowed_paths``), relative to the page."""
    return FILE_ROUTE + urllib.parse.quote(str(Path(path).resolve()), safe="/")


def message_html(text: str) -> str:
    """The player's place holder: one sentence."""
    return f'<div class="compare-empty">{html.escape(text)}</div>'


def player_html(videos: Sequence[str | Path], labels: Sequence[str]) -> str:
    """Two or more videos side by side with one play/pause button and one scrub slider for all."""
    panels = []
    for index, (video, label) in enumerate(zip(videos, labels, strict=True)):
        url = html.escape(file_url(video), quote=True)
        name = html.escape(Path(video).name)
        panels.append(
            f'<figure class="compare-panel" data-index="{index}">'
            f'<video class="compare-video" src="{url}" preload="auto" muted playsinline '
            f'title="{name}"></video>'
            f'<figcaption class="compare-label" title="{name}">{html.escape(str(label))}</figcaption>'
            "</figure>"
        )
    rates = "".join(
        f'<option value="{rate:g}"{" selected" if rate == 1.0 else ""}>{rate:g}×</option>' for rate in RATES
    )
    return (
        f'<div class="compare-player" data-compare-player data-count="{len(panels)}" data-playing="0">'
        f'<div class="compare-grid compare-grid-{min(len(panels), 4)}">{"".join(panels)}</div>'
        '<div class="compare-controls">'
        '<button type="button" class="compare-play" data-compare-action="toggle" aria-pressed="false">'
        "▶ Play</button>"
        f'<input type="range" class="compare-scrub" min="0" max="1000" step="1" value="0" '
        'aria-label="Position in all videos">'
        '<span class="compare-time">0.00 / 0.00 s</span>'
        '<label class="compare-option"><input type="checkbox" data-compare-action="loop" checked> Loop</label>'
        '<label class="compare-option">Speed <select data-compare-action="rate">'
        f"{rates}</select></label>"
        "</div></div>"
    )


def diff_html(rows: Sequence[DiffRow], labels: Sequence[str]) -> str:
    """The settings that differ between the compared renders, as an HTML table."""
    if not rows:
        return message_html("These renders have the same settings and LoRA weights.")
    head = "".join(f"<th>{html.escape(str(label))}</th>" for label in labels)
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(value)}</td>" for value in row.values)
        body.append(f'<tr><th scope="row">{html.escape(row.field)}</th>{cells}</tr>')
    return (
        '<table class="compare-diff-table"><caption>Settings that differ</caption>'
        f'<thead><tr><th scope="col">setting</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
