"""Shared pieces of the Hub client: limits and defaults, the error types, the typed results (repo
summaries, remote files and items, a repo's file listing, downloaded library items) and small helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from studio.errors import LoraFileError, StudioError, ValidationError
from studio.loras.compat import Compat
from studio.loras.inspect import Expert, LoraInfo
from studio.loras.library import LibraryItem
from studio.loras.safetensors_io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from studio.stack.schema import LoraSource, StackEntry

log = logging.getLogger(__name__)

REGISTRY_FILE_NAME = "hub-downloads.json"
REGISTRY_VERSION = 1
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_CACHE_TTL_S = 60.0
SORTS = {"downloads": "downloads", "likes": "likes", "updated": "lastModified"}
SortKey = Literal["downloads", "likes", "updated"]
WanVersion = Literal["2.2", "2.1"]
Task = Literal["i2v", "t2v"]
MAX_LIMIT = 100
MAX_FETCH = 200
README_BYTES = 32 * 1024
README_TIMEOUT_S = 5.0  # a README is a nicety: it never holds a search up for long
MAX_HEADERS = 64
WORKERS = 8
SEARCH_FIELDS = [
    "author",
    "cardData",
    "downloads",
    "gated",
    "lastModified",
    "library_name",
    "likes",
    "pipeline_tag",
    "private",
    "sha",
    "tags",
]
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
registry_lock = threading.Lock()

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | Any  # a callable, a threading.Event or anything with ``.cancelled``


class HubError(StudioError):
    """A Hugging Face Hub call failed (the message is one sentence for the user)."""


class DownloadCancelled(HubError):
    """The user cancelled a download; its partial file was removed."""

    def __init__(self, message: str = "The download was cancelled; no partial file was kept.") -> None:
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------------------
# Typed results
# ---------------------------------------------------------------------------------------------------------------


class RepoSummary(BaseModel):
    """One search result: a Hub repo as the search list shows it (JSON-serialisable)."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str
    author: str | None = None
    downloads: int = 0
    likes: int = 0
    last_modified: str | None = None  # ISO 8601 (UTC)
    sha: str | None = None
    tags: list[str] = []
    pipeline_tag: str | None = None
    library_name: str | None = None
    base_models: list[str] = []
    wan_versions: list[str] = []
    tasks: list[str] = []
    is_lora: bool = False
    gated: bool = False
    private: bool = False
    summary: str | None = None
    trigger_words: list[str] = []
    example_prompts: list[str] = []
    url: str = ""


class RemoteFile(BaseModel):
    """One ``.safetensors`` file of a repo at a commit, inspected from its remote header."""

    model_config = ConfigDict(extra="forbid")

    file: str  # path in the repo
    size: int | None = None
    sha256: str | None = None  # the LFS sha256 (the file's sha256), when the Hub gives it
    info: LoraInfo | None = None
    compat: Compat | None = None
    error: str | None = None  # why the header could not be read (a sentence)
    downloaded: bool = False  # already in the local cache at this commit


class RemoteItem(BaseModel):
    """A single file or a high/low pair of a repo, as the library would show it once downloaded."""

    model_config = ConfigDict(extra="forbid")

    id: str
    repo: str
    revision: str  # the commit sha
    label: str
    kind: Literal["single", "pair"]
    file: str | None = None
    high_file: str | None = None
    low_file: str | None = None
    expert: Expert | None = None  # for a single file meant for one expert only
    size: int = 0
    compat: Compat | None = None  # the worse of its files'
    error: str | None = None
    downloaded: bool = False
    sha256: dict[str, str] = {}  # file -> LFS sha256, where the Hub gives it

    @property
    def files(self) -> list[str]:
        return [f for f in (self.file, self.high_file, self.low_file) if f is not None]

    def to_stack_entry(self, weight_high: float = 1.0, weight_low: float = 1.0) -> StackEntry:
        """A stack entry naming the Hub files (same rules as :meth:`LibraryItem.to_stack_entry`)."""
        if self.error is not None:
            raise LoraFileError(self.error)

        def source(file: str) -> LoraSource:
            return LoraSource(repo=self.repo, file=file, revision=self.revision, sha256=self.sha256.get(file))

        name = self.label[:200] or "LoRA"
        if self.kind == "pair":
            assert self.high_file is not None and self.low_file is not None
            return StackEntry(
                name=name,
                high=source(self.high_file),
                low=source(self.low_file),
                weight_high=weight_high,
                weight_low=weight_low,
            )
        assert self.file is not None
        src = source(self.file)
        if self.expert == "high":
            return StackEntry(name=name, high=src, low=None, weight_high=weight_high, weight_low=0.0)
        if self.expert == "low":
            return StackEntry(name=name, high=None, low=src, weight_high=0.0, weight_low=weight_low)
        return StackEntry(name=name, high=src, low=src, weight_high=weight_high, weight_low=weight_low)


class RepoFiles(BaseModel):
    """The LoRA files of a repo at one commit, inspected remotely (:meth:`HubClient.files`)."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    revision: str  # as asked for ("main" by default)
    sha: str  # the commit it resolved to
    last_modified: str | None = None
    gated: bool = False
    private: bool = False
    files: list[RemoteFile] = []
    items: list[RemoteItem] = []
    refused: list[str] = []  # pickle files (.pt, .ckpt, .bin …): never offered
    not_inspected: list[str] = []  # beyond max_headers
    notes: list[str] = []

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.file == name:
                return f
        raise HubError(f"{name} is not a .safetensors file of {self.repo}; refresh the file list.")

    def item(self, item_id: str) -> RemoteItem:
        for it in self.items:
            if it.id == item_id:
                return it
        raise HubError(f"That LoRA is no longer in the file list of {self.repo}; refresh it.")


class HubLibraryItem(LibraryItem):
    """A library item for files the studio downloaded from the Hub.

    ``path``/``high_path``/``low_path`` are the files in the Hugging Face cache (``snapshots/<sha>/…``),
    ``rel_path``/``high_rel_path``/``low_rel_path`` the files' paths in the repo, ``root`` the snapshot
    folder. :meth:`to_stack_entry` records Hub sources, so presets name the repo, file and commit rather than
    a path inside somebody's cache.
    """

    repo: str
    revision: str  # the commit sha

    @property
    def source_label(self) -> str:
        return f"{self.repo} @ {self.revision[:7]}"

    def to_stack_entry(self, weight_high: float = 1.0, weight_low: float = 1.0) -> StackEntry:
        entry = super().to_stack_entry(weight_high, weight_low)
        in_repo = {
            p: rel
            for p, rel in (
                (self.path, self.rel_path),
                (self.high_path, self.high_rel_path),
                (self.low_path, self.low_rel_path),
            )
            if p is not None and rel is not None
        }

        def hub(source: LoraSource | None) -> LoraSource | None:
            if source is None:
                return None
            return LoraSource(
                repo=self.repo, file=in_repo[str(source.path)], revision=self.revision, sha256=source.sha256
            )

        return StackEntry(
            id=entry.id,
            name=entry.name,
            high=hub(entry.high),
            low=hub(entry.low),
            weight_high=entry.weight_high,
            weight_low=entry.weight_low,
            enabled=entry.enabled,
        )


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def iso_time(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def card_dict(card: Any) -> dict:
    if card is None:
        return {}
    if isinstance(card, Mapping):
        return dict(card)
    to_dict = getattr(card, "to_dict", None)
    if callable(to_dict):
        with contextlib.suppress(Exception):
            data = to_dict()
            return data if isinstance(data, dict) else {}
    return {}


def check_repo_id(repo: str) -> str:
    repo = (repo or "").strip()
    if not _REPO_ID_RE.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise ValidationError(f"{repo!r} is not a Hugging Face repository id; write it as owner/name.")
    return repo


def check_file_name(file: str) -> str:
    file = (file or "").strip().lstrip("/")
    parts = PurePosixPath(file).parts
    if not file or "\\" in file or "\x00" in file or any(p in ("..", ".") for p in parts):
        raise ValidationError(f"{file!r} is not a file name inside a repository.")
    suffix = PurePosixPath(file).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise LoraFileError(
            f"{file} is a PyTorch pickle file ({suffix}); loading a pickle can run any code hidden in it, so "
            "the studio only downloads .safetensors LoRAs."
        )
    if suffix != SAFETENSORS_SUFFIX:
        raise LoraFileError(
            f"{file} is not a .safetensors file; the studio only downloads .safetensors LoRAs."
        )
    return file


def is_cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if hasattr(cancel, "cancelled"):
        return bool(cancel.cancelled)
    return bool(cancel())


def token_key(token: str | None) -> str:
    """A stand-in for a token in in-memory cache keys (never stored anywhere)."""
    return "" if not token else hashlib.sha256(token.encode()).hexdigest()[:16]


def cached_file(repo: str, file: str, sha: str) -> Path | None:
    """The file in the local Hugging Face cache at commit ``sha`` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, file, revision=sha)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def write_ref(repo: str, revision: str, sha: str) -> None:
    """Remember ``revision`` → ``sha`` in the HF cache, as ``hf_hub_download(revision=branch)`` would."""
    if SHA_RE.match(revision) or revision == sha:
        return
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / revision
    with contextlib.suppress(OSError):
        if ref.is_file() and ref.read_text().strip() == sha:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ref-", dir=ref.parent)
        with os.fdopen(fd, "w") as f:
            f.write(sha)
        os.replace(tmp, ref)


def worst_compat(compats: Iterable[Compat | None]) -> Compat | None:
    found = [c for c in compats if c is not None]
    if not found:
        return None
    order = {"incompatible": 0, "partial": 1, "compatible": 2}
    return min(found, key=lambda c: (order[c.level], c.percent))


class Reporter:
    """A stand-in for a tqdm bar handed to ``hf_hub_download``: byte progress to a callback, and cancellation.

    ``huggingface_hub`` instantiates non-tqdm classes with ``cls(**kwargs)`` and only calls ``update`` and
    the context-manager methods, so nothing is printed.
    """

    def __init__(self, on_update: Callable[[int], None], **kwargs: Any) -> None:
        self.n = int(kwargs.get("initial") or 0)
        self.total = kwargs.get("total")
        self._on_update = on_update
        if self.n:
            on_update(self.n)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self._on_update(int(n))

    def close(self) -> None:
        pass
