"""The public API endpoints (``/render``, ``/cancel``), typed for ``gradio_client``.

This module deliberately has no ``from __future__ import annotations``: ``gr.api``
reads the type hints at registration time to build the endpoint's schema.
"""

import json

import gradio as gr
from gradio.data_classes import FileData

from studio.service import Studio
from studio.ui import handlers as h


def _no_progress(*args, **kwargs) -> None:
    pass


def register_api(studio: Studio, *, concurrency_id: str) -> None:
    def render(
        image: FileData,
        prompt: str,
        settings_json: str = "{}",
        stack_json: str = "",
        request: gr.Request = None,
    ) -> tuple[FileData, str]:
        """Render a video from a start image. settings_json: a JSON object of render settings (width,
        height, frames, steps, guidance, guidance_low, shift, seed, fps, negative_prompt); missing ones take
        the model's defaults. stack_json: a LoRA stack in the studio's JSON schema (empty: no LoRAs).
        Returns the MP4 and its render record (the sidecar) as JSON text."""
        path = image["path"] if isinstance(image, dict) else getattr(image, "path", image)
        video_path, record = h.render_api(
            studio, request, path, prompt, settings_json, stack_json, _no_progress
        )
        return FileData(path=video_path), json.dumps(record)

    def cancel(request: gr.Request = None) -> str:
        """Cancel the calling session's running render."""
        return "cancelling" if studio.cancel(h._session(request)) else "no render running"

    gr.api(render, api_name="render", concurrency_id=concurrency_id, concurrency_limit=1)
    gr.api(cancel, api_name="cancel", queue=False)
