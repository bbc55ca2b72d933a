"""The History tab: every render in a gallery; clicking one (or dropping one of our MP4s) restores it."""

from __future__ import annotations

import gradio as gr

from studio.service import Studio
from studio.ui.refs import EditorRefs


def build_history_tab(studio: Studio, refs: EditorRefs) -> None:
    gr.Markdown("Renders will be listed here.")
