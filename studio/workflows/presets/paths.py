"""Paths in presets: a local source is a path *relative to a LoRA folder*.

An absolute path inside a LoRA folder is made relative when a preset is read or saved; ``..``, an
absolute path outside the LoRA folders and a symbolic link that leads out of them are refused with a
sentence naming the field. A file that is simply not there is not an error (a preset travels between
machines): :func:`studio.loras.sources.missing_files` says so at render time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.errors import ValidationError
from studio.loras.sources import inside_roots
from studio.stack.schema import (
    LoraSource,
)


def _lexical(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _relative_to_roots(path: Path, roots: Sequence[Path]) -> str | None:
    """``path`` relative to the first LoRA folder that holds it (lexically, then resolved), else None."""
    candidates = [_lexical(path)]
    with contextlib.suppress(OSError, RuntimeError):
        candidates.append(path.expanduser().resolve())
    for candidate in candidates:
        for root in roots:
            for base in (_lexical(Path(root)), Path(root).expanduser().resolve()):
                if candidate.is_relative_to(base) and candidate != base:
                    return candidate.relative_to(base).as_posix()
    return None


def relative_source(source: LoraSource, roots: Sequence[Path], field_name: str = "path") -> LoraSource:
    """``source`` with an absolute local path inside a LoRA folder made relative to it.

    An absolute path outside every LoRA folder raises ``ValidationError`` naming ``field_name``.
    Hub sources and relative paths are returned as they are.
    """
    if source.is_hub or source.path is None:
        return source
    given = Path(source.path).expanduser()
    if not given.is_absolute():
        return source
    relative = _relative_to_roots(given, roots)
    if relative is None or not inside_roots(given, roots):
        folders = ", ".join(str(r) for r in roots) or "(none configured)"
        raise ValidationError(
            f"Invalid preset: {field_name}: {source.path!r} is outside the LoRA folders ({folders}); "
            "put the file in a LoRA folder first."
        )
    return source.model_copy(update={"path": relative})


def relativize_raw(data: dict[str, Any], roots: Sequence[Path]) -> None:
    """Make absolute paths inside the LoRA folders relative, in the raw dict, before validation."""
    entries = data.get("entries")
    if not roots or not isinstance(entries, list):
        return
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for expert in ("high", "low"):
            source = entry.get(expert)
            if isinstance(source, dict) and isinstance(source.get("path"), str):
                text = source["path"].strip()
                if "\x00" in text:
                    continue
                given = Path(text).expanduser()
                if given.is_absolute() and inside_roots(given, roots):
                    relative = _relative_to_roots(given, roots)
                    if relative is not None:
                        source["path"] = relative


def check_links(entries: Sequence[Any], roots: Sequence[Path], what: str) -> None:
    """A relative path must not lead out of the LoRA folders through a symbolic link."""
    problems = []
    for i, entry in enumerate(entries):
        for expert in ("high", "low"):
            source = getattr(entry, expert)
            if source is None or source.path is None:
                continue
            for root in roots:
                candidate = Path(root) / source.path
                if (candidate.is_symlink() or candidate.exists()) and not inside_roots(candidate, roots):
                    problems.append(
                        f"entries.{i}.{expert}.path: {source.path!r} leads out of the LoRA folders "
                        "through a symbolic link"
                    )
                    break
    if problems:
        raise ValidationError(f"Invalid {what}: " + "; ".join(problems) + ".")
