"""The doctor's cache: what it computed per LoRA file and per pair of files, for one model structure.

A file is known by its resolved path, size and mtime (a file changed on disk is computed
again) and the model by its transformer config (module names and shapes decide what the
file changes; base weights are not part of it: their norms are kept per loaded model by
the manager). Entries live in memory and, when a folder is given, as one small JSON file
each under ``<cache>/doctor/`` (written atomically; a missing, stale or corrupt file is
simply computed again). Nothing here depends on the LoRA weights set in the stack.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from studio.doctor.effect import FileStats
from studio.loras.sources import FileIdentity
from studio.media.files import write_cache_json

CACHE_VERSION = 2
MEMORY_ENTRIES = 4096


def model_key(transformer_config: Mapping[str, Any]) -> str:
    """A short key for a transformer structure (its config)."""
    text = json.dumps(dict(transformer_config), sort_keys=True, default=str)
    return hashlib.sha1(f"{text}|doctor-v{CACHE_VERSION}".encode()).hexdigest()[:16]


Unit = tuple[FileIdentity, "str | None"]  # a file, or one half ("high"/"low") of a two-expert file


def file_key(identity: FileIdentity) -> str:
    return f"{identity.path}|{identity.size}|{identity.mtime_ns}"


def unit_key(identity: FileIdentity, half: str | None = None) -> str:
    return file_key(identity) + (f"#{half}" if half else "")


class DoctorCache:
    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) / "doctor" if folder is not None else None
        self._memory: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.disk_reads = 0  # counters the tests read
        self.disk_writes = 0

    # ------------------------------------------------------------------ generic
    def _path(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.json"

    def _get(self, key: str) -> Any:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        path = self._path(key)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("key") != key:
            return None
        self.disk_reads += 1
        value = data.get("value")
        self._remember(key, value)
        return value

    def _remember(self, key: str, value: Any) -> None:
        with self._lock:
            if len(self._memory) >= MEMORY_ENTRIES:
                self._memory.pop(next(iter(self._memory)))
            self._memory[key] = value

    def _put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        path = self._path(key)
        if path is not None and write_cache_json(
            path, {"version": CACHE_VERSION, "key": key, "value": value}
        ):
            self.disk_writes += 1

    # ------------------------------------------------------------------ entries
    def file_stats(self, model: str, identity: FileIdentity) -> FileStats | None:
        value = self._get(f"file|{model}|{file_key(identity)}")
        if not isinstance(value, dict):
            return None
        try:
            return FileStats.model_validate(value)
        except PydanticValidationError:
            return None

    def put_file_stats(self, model: str, identity: FileIdentity, stats: FileStats) -> None:
        self._put(f"file|{model}|{file_key(identity)}", stats.model_dump(mode="json"))

    @staticmethod
    def _pair_key(model: str, a: Unit, b: Unit) -> str:
        """The same key both ways round (inner products are symmetric)."""
        first, second = sorted((unit_key(*a), unit_key(*b)))
        return f"pair|{model}|{first}|{second}"

    def pair_dots(self, model: str, a: Unit, b: Unit) -> dict[str, float] | None:
        """Module → ``⟨Δ_a, Δ_b⟩`` of two files (or halves of two-expert files), as stored."""
        value = self._get(self._pair_key(model, a, b))
        if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
            return None
        return {str(k): float(v) for k, v in value.items()}

    def put_pair_dots(self, model: str, a: Unit, b: Unit, dots: Mapping[str, float]) -> None:
        self._put(self._pair_key(model, a, b), dict(dots))
