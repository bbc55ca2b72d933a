"""sha256 of LoRA files, cached by (resolved path, size, mtime_ns).

Hashing a 600 MB LoRA takes about a second; the library inspects files often, so the
digest is kept in a small JSON file (``sha256-cache.json``) in a folder the caller
chooses. An entry is used only while the file's size and mtime_ns are unchanged.
The cache file is replaced atomically (temporary file + ``os.replace``), and a
missing or corrupt cache is simply treated as empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from studio.media.files import write_cache_json

CACHE_FILE_NAME = "sha256-cache.json"
CACHE_VERSION = 1
MAX_ENTRIES = 5000
_CHUNK = 4 * 1024 * 1024
_lock = threading.Lock()


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): the cache key of a file as it is now."""
    resolved = Path(path).resolve()
    st = os.stat(resolved)
    return str(resolved), st.st_size, st.st_mtime_ns


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes (reads it all)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Sha256Cache:
    """The JSON digest cache in ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / CACHE_FILE_NAME

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, path: str | Path) -> str | None:
        """The cached digest of ``path`` if the file is unchanged since it was stored."""
        try:
            key, size, mtime_ns = file_identity(Path(path))
        except OSError:
            return None
        entry = self._load().get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == size
            and entry.get("mtime_ns") == mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            return entry["sha256"]
        return None

    def put(self, path: str | Path, sha256: str, identity: tuple[str, int, int] | None = None) -> None:
        """Store a digest for ``path`` as it is now (or as it was at ``identity``)."""
        key, size, mtime_ns = identity if identity is not None else file_identity(Path(path))
        with _lock:
            entries = self._load()
            entries.pop(key, None)
            entries[key] = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256}
            while len(entries) > MAX_ENTRIES:  # oldest insertions first
                entries.pop(next(iter(entries)))
            self._write({"version": CACHE_VERSION, "entries": entries})

    def _write(self, data: dict) -> None:
        write_cache_json(self.file, data)


def file_sha256(path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """sha256 of ``path``; with ``cache_dir`` an unchanged file is not hashed again."""
    path = Path(path)
    if cache_dir is None:
        return hash_file(path)
    cache = Sha256Cache(cache_dir)
    cached = cache.get(path)
    if cached is not None:
        return cached
    before = file_identity(path)
    digest = hash_file(path)
    if file_identity(path) == before:  # don't cache a file that changed while we read it
        cache.put(path, digest, before)
    return digest


def remember_sha256(
    path: str | Path,
    sha256: str,
    *,
    cache_dir: str | Path | None,
    identity: tuple[str, int, int] | None = None,
) -> None:
    """Store a digest computed elsewhere (e.g. while the file was loaded).

    ``identity`` is :func:`file_identity` taken *before* the bytes were read; when the
    file has changed since, nothing is stored.
    """
    if cache_dir is None:
        return
    with contextlib.suppress(OSError):
        if identity is not None and file_identity(path) != identity:
            return
        Sha256Cache(cache_dir).put(path, sha256, identity)
