"""The preset store's own refusals (each a :class:`~studio.errors.ValidationError` with a sentence)."""

from __future__ import annotations

from pathlib import Path

from studio.errors import ValidationError


class PresetExists(ValidationError):
    """Saving would replace an existing preset: ask the user, then save with ``overwrite=True``."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        super().__init__(
            f"A preset named {name!r} already exists ({path.name}). Confirm to replace it, or choose another name."
        )


class PresetReadOnly(ValidationError):
    """A shipped preset cannot be changed, renamed or deleted (duplicate it instead)."""


class PresetNotFound(ValidationError):
    """No preset of that name (or file)."""
