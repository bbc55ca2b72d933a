"""Launching the Gradio app with the studio's safety settings (loopback by default, file limits)."""

from __future__ import annotations

import os

from studio.service import Studio
from studio.ui.compare_player import head_html
from studio.ui.layout import CSS_PATH, build_app

MAX_UPLOAD = "50mb"


def default_host() -> str:
    # A Space must listen on all interfaces; everywhere else the studio stays on loopback unless told.
    if os.environ.get("SPACE_ID") or os.environ.get("GRADIO_SERVER_NAME"):
        return os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    return "127.0.0.1"


def launch(studio: Studio, *, host: str | None = None, port: int | None = None, share: bool = False,
           max_queue: int = 16, prevent_thread_lock: bool = False):  # fmt: skip
    app = build_app(studio)
    app.queue(max_size=max_queue, default_concurrency_limit=1)
    studio.settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    return app.launch(
        server_name=host or default_host(),
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        share=share,
        allowed_paths=[str(studio.settings.outputs_dir.resolve())],
        max_file_size=MAX_UPLOAD,
        css_paths=[CSS_PATH],
        head=head_html(),
        show_error=True,
        prevent_thread_lock=prevent_thread_lock,
        ssr_mode=False,
    ), app
