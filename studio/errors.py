"""The studio's own error types.

Every error a user can cause is a ``StudioError`` whose message is a sentence that
says what went wrong and what to do about it. The UI and CLI show ``str(error)``
as is; anything else escaping the engine is a bug.
"""

from __future__ import annotations


class StudioError(Exception):
    """An error whose message is meant for the user."""


class ValidationError(StudioError):
    """Settings, a stack or a preset that cannot be used as given."""


class LoraFileError(StudioError):
    """A LoRA file that cannot be read safely or does not fit the model."""


class ModelError(StudioError):
    """A model that cannot be found, downloaded or loaded."""


class RenderCancelled(StudioError):
    """The user cancelled the render."""

    def __init__(self, message: str = "The render was cancelled; nothing was written.") -> None:
        super().__init__(message)


class OutOfMemory(StudioError):
    """The GPU (or host) ran out of memory during a render."""


class OutputError(StudioError):
    """The video or its sidecar could not be written."""
