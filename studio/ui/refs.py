"""The editor's components, handed to the panels and tabs that read from or restore into the editor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr


@dataclass
class EditorRefs:
    app: gr.Blocks
    tabs: gr.Tabs
    image: gr.Image
    prompt: gr.Textbox
    negative: gr.Textbox
    width: gr.Number
    height: gr.Number
    frames: gr.Number
    steps: gr.Number
    guidance: gr.Number
    guidance_low: gr.Number
    shift: gr.Number
    seed: gr.Number
    fps: gr.Number
    fuse: gr.Checkbox
    stack_state: gr.State  # the session's stack as a dict (Stack JSON form)
    stack_version: gr.State  # bump it (+1) after replacing the stack, so the stack view re-draws
    stack_status: gr.HTML
    render_status: gr.HTML
    video: gr.Video
    library: gr.Dropdown  # value: the selected library item id
    high_steps: gr.Number  # the first K steps on the high-noise expert; -1: the model's boundary

    @property
    def settings_widgets(self) -> list[Any]:
        """In the order of :func:`studio.ui.handlers.settings_from_widgets`."""
        return [self.prompt, self.negative, self.width, self.height, self.frames, self.steps, self.guidance,
                self.guidance_low, self.shift, self.seed, self.fps, self.high_steps]  # fmt: skip

    def settings_values(self, settings) -> list[Any]:
        """Widget values (same order as :attr:`settings_widgets`) for a RenderSettings."""
        low = settings.guidance if settings.guidance_low is None else settings.guidance_low
        seed = -1 if settings.seed is None else settings.seed
        return [settings.prompt, settings.negative_prompt, settings.width, settings.height, settings.frames,
                settings.steps, settings.guidance, low, settings.shift, seed, settings.fps,
                -1 if settings.high_steps is None else settings.high_steps]  # fmt: skip
