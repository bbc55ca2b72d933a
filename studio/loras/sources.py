"""Turning a stack entry's :class:`~studio.stack.schema.LoraSource` into a file on disk.

Local paths are resolved against the configured LoRA folders and must stay inside
one of them (no ``..``, absolute paths or symlinks out of a root). Hub sources
resolve to the local Hugging Face cache; they are never fetched here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.errors import LoraFileError
from studio.stack.schema import Stack

LORA_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class FileIdentity:
    """A file as the studio knows it: where it is and which version of it (size + mtime)."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = path.stat()
        return cls(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def inside_roots(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` (after resolving symlinks) lies inside one of ``roots``."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):
        return False
    return any(resolved.is_relative_to(Path(root).resolve()) for root in roots)


def resolve_local(path_text: str, roots: Sequence[Path]) -> Path:
    """A user-given LoRA path → an existing file inside one of ``roots``."""
    if "\x00" in path_text:
        raise LoraFileError("A LoRA path contains a NUL character; choose the file from the library again.")
    given = Path(path_text).expanduser()
    candidates = [given] if given.is_absolute() else [Path(root) / given for root in roots]
    inside = [c for c in candidates if inside_roots(c, roots)]
    if not inside:
        folders = ", ".join(str(r) for r in roots) or "(none configured)"
        raise LoraFileError(
            f"The LoRA path {path_text!r} is outside the LoRA folders ({folders}); put the file in one "
            "of them or add its folder with --lora-dir / STUDIO_LORA_DIRS."
        )
    for candidate in inside:
        resolved = candidate.resolve()
        if resolved.is_file():
            if resolved.suffix.lower() != LORA_SUFFIX:
                raise LoraFileError(
                    f"{resolved.name} is not a .safetensors file; the studio only loads .safetensors LoRAs."
                )
            return resolved
    raise LoraFileError(
        f"The LoRA file {path_text!r} was not found in the LoRA folders; it may have been moved or "
        "deleted. Add it again from the library."
    )


def resolve_hub(repo: str, file: str, revision: str | None) -> Path:
    """A Hub file → its path in the local Hugging Face cache (no download here)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, file, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise LoraFileError(
            f"{repo}/{file} is not downloaded yet; download it from the Hub panel or with "
            f"`python -m studio hub download {repo} {file}`."
        ) from None


def resolve_source(source, roots: Sequence[Path]) -> Path:
    if source.is_hub:
        return resolve_hub(source.repo, source.file, source.revision)
    return resolve_local(source.path, roots)


def missing_files(stack: Stack, roots: Sequence[Path]) -> list[str]:
    """One sentence per enabled stack file that cannot be found (empty when all are there)."""
    problems = []
    for entry in stack.entries:
        if not entry.enabled:
            continue
        for source in {id(s): s for s in (entry.high, entry.low) if s is not None}.values():
            try:
                resolve_source(source, roots)
            except LoraFileError as exc:
                problems.append(f"{entry.name}: {exc}")
    return problems


def list_lora_files(roots: Sequence[Path]) -> list[Path]:
    """Every ``.safetensors`` file under ``roots`` (recursively, symlinks out of a root skipped)."""
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.lower().endswith(LORA_SUFFIX) and not name.startswith("."):
                    path = Path(dirpath) / name
                    if inside_roots(path, roots):
                        found[path.resolve()] = None
    return list(found)
