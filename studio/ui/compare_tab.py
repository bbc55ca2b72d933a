"""The Compare tab: two to four renders side by side, synchronized, with the settings that differ."""

from __future__ import annotations

import gradio as gr

from studio.service import Studio
from studio.ui.refs import EditorRefs


def build_compare_tab(studio: Studio, refs: EditorRefs) -> None:
    gr.Markdown("Choose renders to compare.")
