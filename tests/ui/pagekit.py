"""Small helpers shared by the UI tests (imported as ``pagekit``: tests/ui is on sys.path)."""

from __future__ import annotations

import socket

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
# Gradio renders a Group as two nested divs carrying the same class: take the outer one.
ENTRY = ".stack-entry:not(.stack-entry .stack-entry)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_not_blank(path) -> None:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"


def choose(page, dropdown: str, option_prefix: str) -> None:
    """Pick the option of a Gradio dropdown (``#elem-id``) whose text starts with ``option_prefix``."""
    import re

    page.click(f"{dropdown} input")
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option_prefix)}")).click()
