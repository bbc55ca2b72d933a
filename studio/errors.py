"""The studio's own error types.

Every error a user can cause is a ``StudioError`` whose message is a sentence that
says what went wrong and what to do about it. The CLI shows ``str(error)`` as is; the
web UI shows it through :func:`without_server_paths` (a Space must not reveal where it
keeps its files); anything else escaping the engine is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path


class StudioError(Exception):
    """An error whose message is meant for the user."""


class ValidationError(StudioError):
    """Settings, a stack or a preset that cannot be used as given."""


class LoraFileError(StudioError):
    """A LoRA file that cannot be read safely or does not fit the model."""


class ModelError(StudioError):
    """A model that cannot be found, downloaded or loaded."""


class RenderCancelled(StudioError):
    """The user cancelled the render; ``steps_done`` of ``total`` denoising steps had run (when known)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        steps_done: int | None = None,
        total: int | None = None,
    ) -> None:
        if message is None:
            message = (
                f"Render cancelled after step {steps_done} of {total}; nothing was written."
                if steps_done is not None and total is not None
                else "The render was cancelled; nothing was written."
            )
        super().__init__(message)
        self.steps_done = steps_done
        self.total = total


class OutOfMemory(StudioError):
    """The GPU (or host) ran out of memory during a render."""


class OutputError(StudioError):
    """The video or its sidecar could not be written."""


# An absolute POSIX path of two or more parts, not inside a word, a URL or a relative path.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@~-]+/)+[\w.+@~-]*")


def without_server_paths(text: str, folders: Iterable[tuple[Path | str, str]] = ()) -> str:
    """``text`` with the server's absolute paths taken out, for messages shown in the browser.

    ``folders`` are ``(absolute folder, display name)`` pairs (the LoRA folders, the outputs
    folder, …): a path inside one is named relative to it (``sub/style.safetensors``), the
    folder itself by its display name. Any other absolute path is named by its last part.
    """
    pairs = sorted(((str(Path(f)), name) for f, name in folders), key=lambda p: len(p[0]), reverse=True)
    for folder, name in pairs:
        if folder in ("", "/", "."):
            continue
        text = re.sub(re.escape(folder) + r"/+(?=[^\s/])", "", text)
        text = re.sub(re.escape(folder) + r"(?![\w.+@~-])", name, text)
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)
