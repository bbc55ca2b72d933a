"""LoRAs from the Hugging Face Hub: search, remote inspection, download, and what is already here.

Everything goes through the real ``huggingface_hub`` client (its HTTP session, ``HfApi``,
``hf_raise_for_status``, ``hf_hub_download`` and the standard cache), pointed wherever ``HF_ENDPOINT`` says.

:class:`HubClient` (one per user/session; cheap to make):

``search(query, wan_version=, task=, sort=, limit=)``
    One ``GET /api/models`` (``search`` = the free text, ``"wan"`` when empty; ``expand`` = the fields
    shown), then Wan-aware filters on what came back (:mod:`studio.loras.hub_card`): LoRAs only, Wan at all,
    Wan2.2 / Wan2.1, I2V / T2V. A filter drops repos *known* to be something else (a Wan2.1 LoRA when 2.2 is
    asked for); repos that say nothing stay in. The README of each shown result is read (its first 32 kB, in
    parallel, at most 5 s, cached by commit; a failure only leaves the summary out) for the card summary and
    trigger words. Results are cached for
    ``cache_ttl_s`` seconds per (query, filters, token). ``HfApi.list_models`` is not used because it takes
    no timeout and retries 429/5xx for about half a minute; the request is the same one it makes.
``files(repo, revision=None, model_config=None)``
    ``HfApi.model_info(files_metadata=True)`` resolves the revision to a commit sha and lists the files with
    sizes and LFS sha256s; each ``.safetensors`` file's header is read with Range requests
    (:mod:`studio.loras.hub_header`, the same validation as local files) and summarised into a
    :class:`~studio.loras.inspect.LoraInfo`; high/low halves are paired with the local library's rules;
    with ``model_config`` each file and item gets a :class:`~studio.loras.compat.Compat`. Headers are cached
    by (repo, sha, file).
``download(repo, files, revision, progress)``
    Pinned to the commit sha (``model_info`` resolves a branch; a full sha already in the cache needs no
    request at all). ``hf_hub_download`` writes each blob to a process-unique ``….incomplete`` file, resumes
    it after a dropped connection within the call, moves it into ``blobs/`` only when complete and links it
    into ``snapshots/<sha>/`` after that, and deletes the partial file when the download fails or is
    cancelled: a snapshot never shows a half file. The file is then checked against the Hub's sha256 (the
    digest is remembered in the studio's sha256 cache, so the library never hashes it again) and recorded in
    the download registry. Files already in the cache are not fetched again.
``missing(stack_or_sources)`` / ``download_sources(sources)`` / ``resolve(source)``
    For presets: the Hub sources that are not in the local cache, fetching exactly those, and the local path
    of one (no network).
``downloaded()`` / ``library_items()``
    What the studio downloaded and is still in the cache, as ``(LoraSource, Path)`` pairs and as library
    items (:class:`HubLibraryItem`, paired like local files) whose ``to_stack_entry`` records the Hub source
    ``LoraSource(repo=, file=, revision=<sha>, sha256=<LFS sha256>)``.

**Download registry.** ``hub-downloads.json`` in the studio cache folder lists the files the studio
downloaded (repo, file, commit sha, sha256, size, when); it is replaced atomically. Paths are not stored: they
are looked up in the Hugging Face cache each time, so a file removed from that cache simply drops out.

**Tokens.** A token is given to the client or per call and kept in memory only: it is passed to
``huggingface_hub`` per request and never written, logged, put in a registry, preset or sidecar (the
registry has no field for it). ``None`` lets ``huggingface_hub`` use ``HF_TOKEN`` (or its own login).

**Failures.** Every Hub failure (offline, DNS, refused connection, timeout, 401/403/404/429/5xx, gated or
private repos, unknown revisions or files) raises :class:`HubError` with
:func:`studio.hub_errors.hub_failure_message`'s sentence; nothing else of the studio depends on the Hub.
Calls take ``timeout_s`` (per request) and never retry with long waits, so a UI worker is never stuck.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from studio.errors import LoraFileError, StudioError, ValidationError
from studio.loras import hub_card
from studio.loras.compat import Compat, check_compat
from studio.loras.hashing import file_sha256
from studio.loras.hub_header import RemoteName
from studio.loras.inspect import Expert, LoraInfo, inspect_lora
from studio.loras.library import LibraryItem, _File, _group_files
from studio.loras.safetensors_io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from studio.media import write_cache_json
from studio.stack import LoraSource, Stack, StackEntry

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
_WORKERS = 8
_SEARCH_FIELDS = [
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
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_registry_lock = threading.Lock()

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


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _card_dict(card: Any) -> dict:
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


def _check_file_name(file: str) -> str:
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


def _is_cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if hasattr(cancel, "cancelled"):
        return bool(cancel.cancelled)
    return bool(cancel())


def _token_key(token: str | None) -> str:
    """A stand-in for a token in in-memory cache keys (never stored anywhere)."""
    return "" if not token else hashlib.sha256(token.encode()).hexdigest()[:16]


def _cached_file(repo: str, file: str, sha: str) -> Path | None:
    """The file in the local Hugging Face cache at commit ``sha`` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, file, revision=sha)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _write_ref(repo: str, revision: str, sha: str) -> None:
    """Remember ``revision`` → ``sha`` in the HF cache, as ``hf_hub_download(revision=branch)`` would."""
    if _SHA_RE.match(revision) or revision == sha:
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


def _worst(compats: Iterable[Compat | None]) -> Compat | None:
    found = [c for c in compats if c is not None]
    if not found:
        return None
    order = {"incompatible": 0, "partial": 1, "compatible": 2}
    return min(found, key=lambda c: (order[c.level], c.percent))


class _Reporter:
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

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self._on_update(int(n))

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# The registry of downloads
# ---------------------------------------------------------------------------------------------------------------


def registry_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / REGISTRY_FILE_NAME


def _load_registry(cache_dir: Path) -> list[dict]:
    try:
        data = json.loads(registry_path(cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION:
        return []
    entries = data.get("files")
    if not isinstance(entries, list):
        return []
    good = []
    for e in entries:
        if (
            isinstance(e, dict)
            and isinstance(e.get("repo"), str)
            and isinstance(e.get("file"), str)
            and isinstance(e.get("revision"), str)
            and _SHA_RE.match(e["revision"])
        ):
            good.append(e)
    return good


def _record_download(cache_dir: Path, entry: dict) -> None:
    with _registry_lock:
        entries = [
            e
            for e in _load_registry(cache_dir)
            if (e["repo"], e["file"], e["revision"]) != (entry["repo"], entry["file"], entry["revision"])
        ]
        entries.append(entry)
        data = {"version": REGISTRY_VERSION, "files": entries}
        if not write_cache_json(registry_path(Path(cache_dir)), data):
            log.warning("cannot record the download of %s/%s", entry["repo"], entry["file"])


def downloaded(cache_dir: Path) -> list[tuple[LoraSource, Path]]:
    """The files the studio downloaded that are still in the Hugging Face cache (no network)."""
    out: list[tuple[LoraSource, Path]] = []
    for e in _load_registry(cache_dir):
        path = _cached_file(e["repo"], e["file"], e["revision"])
        if path is None:
            continue
        sha256 = e.get("sha256") if isinstance(e.get("sha256"), str) else None
        out.append((LoraSource(repo=e["repo"], file=e["file"], revision=e["revision"], sha256=sha256), path))
    return out


_info_cache: dict[tuple[str, int, int], LoraInfo] = {}
_info_lock = threading.Lock()


def _inspect_cached(path: Path) -> LoraInfo:
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _info_lock:
        hit = _info_cache.get(key)
    if hit is not None:
        return hit
    info = inspect_lora(path, hash_file=False)
    with _info_lock:
        if len(_info_cache) > 2000:
            _info_cache.clear()
        _info_cache[key] = info
    return info


def hub_item_id(repo: str, sha: str, files) -> str:
    """The id of a Hub file or pair, the same in the Hub listing and in the library once downloaded."""
    return "hub-" + hashlib.sha256("\n".join([repo, sha, *files]).encode()).hexdigest()[:16]


def library_items(cache_dir: Path) -> list[HubLibraryItem]:
    """The downloaded Hub files as library items, paired like local files (per repo and commit)."""
    groups: dict[tuple[str, str], list[_File]] = {}
    for source, path in downloaded(cache_dir):
        assert source.repo is not None and source.file is not None and source.revision is not None
        root = Path(str(path)[: -len(source.file)].rstrip("/\\"))
        try:
            info: LoraInfo | None = _inspect_cached(path)
            error = None
        except StudioError as exc:
            info, error = None, str(exc)
        except OSError as exc:
            info, error = (
                None,
                f"{source.file} from {source.repo} cannot be read ({exc.strerror}); download it again.",
            )
        if info is not None and source.sha256:
            info = info.model_copy(update={"sha256": source.sha256})
        groups.setdefault((source.repo, source.revision), []).append(_File(path, root, info, error))
    items: list[HubLibraryItem] = []
    for (repo, sha), files in sorted(groups.items()):
        for item in _group_files(files):
            data = item.model_dump()
            rels = [r for r in (item.rel_path, item.high_rel_path, item.low_rel_path) if r]
            data["id"] = hub_item_id(repo, sha, rels)
            items.append(HubLibraryItem(**data, repo=repo, revision=sha))
    items.sort(key=lambda it: (it.repo.lower(), (it.rel_path or it.high_rel_path or "").lower()))
    return items


def _hub_sources(stack_or_sources: Stack | Iterable[StackEntry | LoraSource]) -> list[LoraSource]:
    if isinstance(stack_or_sources, Stack):
        items: Iterable[StackEntry | LoraSource] = [e for e in stack_or_sources.entries if e.enabled]
    else:
        items = stack_or_sources
    seen: dict[tuple, LoraSource] = {}
    for item in items:
        sources = [item.high, item.low] if isinstance(item, StackEntry) else [item]
        for s in sources:
            if s is not None and s.is_hub:
                seen.setdefault((s.repo, s.file, s.revision), s)
    return list(seen.values())


def resolve(source: LoraSource) -> Path:
    """The local file of a Hub source (no network); :class:`LoraFileError` when it is not downloaded."""
    from studio.loras.sources import resolve_hub

    if not source.is_hub:
        raise ValidationError(f"{source.label()} is not a Hub file.")
    assert source.repo is not None and source.file is not None
    return resolve_hub(source.repo, source.file, source.revision)


def missing(stack_or_sources: Stack | Iterable[StackEntry | LoraSource]) -> list[LoraSource]:
    """The Hub sources (of the enabled entries of a stack, or given) that are not in the local cache."""
    out = []
    for source in _hub_sources(stack_or_sources):
        try:
            resolve(source)
        except (LoraFileError, ValidationError):
            out.append(source)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------------


class HubClient:
    """The studio's view of the Hub (see the module docstring). Thread-safe; one per user is enough."""

    def __init__(
        self,
        token: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        endpoint: str | None = None,
    ) -> None:
        if cache_dir is None:
            from studio.settings import Settings

            cache_dir = Settings.from_env().cache_dir
        self._token = token.strip() if isinstance(token, str) and token.strip() else None
        self.cache_dir = Path(cache_dir)
        self.cache_ttl_s = float(cache_ttl_s)
        self.timeout_s = float(timeout_s)
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._lock = threading.Lock()
        self._search_cache: dict[tuple, tuple[float, list[RepoSummary]]] = {}
        self._readme_cache: dict[tuple, tuple[str | None, list[str]]] = {}
        self._header_cache: dict[tuple, tuple[LoraInfo | None, str | None]] = {}

    def __repr__(self) -> str:  # never shows the token
        return f"HubClient(token={'set' if self._token else 'none'}, cache_dir={str(self.cache_dir)!r})"

    # -- plumbing -------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        from huggingface_hub import constants

        return self._endpoint or constants.ENDPOINT.rstrip("/")

    def _token_for(self, token: str | None) -> str | None:
        if isinstance(token, str) and token.strip():
            return token.strip()
        return self._token

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint)

    def _headers(self, token: str | None) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=token)

    def _timeout(self, timeout_s: float | None) -> float:
        return float(timeout_s) if timeout_s is not None else self.timeout_s

    @staticmethod
    def _fail(exc: BaseException, *, repo: str | None, action: str) -> HubError:
        from studio.hub_errors import hub_failure_message

        message = hub_failure_message(exc, repo=repo, action=action)
        log.info("Hub call failed (%s): %s [%s]", action, message, type(exc).__name__)
        return HubError(message)

    def clear_cache(self) -> None:
        """Forget cached search results, READMEs and remote headers."""
        with self._lock:
            self._search_cache.clear()
            self._readme_cache.clear()
            self._header_cache.clear()

    # -- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        query: str = "",
        *,
        wan_version: WanVersion | None = None,
        task: Task | None = None,
        sort: SortKey = "downloads",
        limit: int = 20,
        lora_only: bool = True,
        readme: bool = True,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> list[RepoSummary]:
        """Wan LoRA repos matching ``query`` (see the module docstring); cached for ``cache_ttl_s``."""
        query = " ".join((query or "").split())[:200]
        if sort not in SORTS:
            raise ValidationError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
        if wan_version not in (None, "2.2", "2.1"):
            raise ValidationError(f"The Wan version is 2.2 or 2.1, not {wan_version!r}.")
        if task not in (None, "i2v", "t2v"):
            raise ValidationError(f"The task is i2v or t2v, not {task!r}.")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"Ask for 1 to {MAX_LIMIT} results, not {limit!r}.")
        tok = self._token_for(token)
        key = (
            self.endpoint,
            query.lower(),
            wan_version,
            task,
            sort,
            limit,
            lora_only,
            readme,
            _token_key(tok),
        )
        now = time.monotonic()
        with self._lock:
            hit = self._search_cache.get(key)
            if hit is not None and now - hit[0] < self.cache_ttl_s:
                return [r.model_copy(deep=True) for r in hit[1]]
        timeout = self._timeout(timeout_s)
        raw = self._list_models(query, sort, min(MAX_FETCH, max(limit * 4, 50)), tok, timeout)
        results = []
        for model in raw:
            summary = self._summarise(model)
            if lora_only and not summary.is_lora:
                continue
            # named base models decide whether it is for Wan at all; without any, the id and tags do
            texts = summary.base_models or [summary.repo_id, *summary.tags]
            if not summary.wan_versions and not hub_card.mentions_wan(texts):
                continue
            if wan_version and summary.wan_versions and wan_version not in summary.wan_versions:
                continue
            if task and summary.tasks and task not in summary.tasks:
                continue
            results.append(summary)
            if len(results) >= limit:
                break
        if readme and results:
            self._add_readmes(results, tok, timeout)
        with self._lock:
            self._search_cache = {
                k: v for k, v in self._search_cache.items() if now - v[0] < self.cache_ttl_s
            }
            self._search_cache[key] = (now, [r.model_copy(deep=True) for r in results])
        return results

    def _list_models(self, query: str, sort: str, fetch: int, token: str | None, timeout: float) -> list:
        from huggingface_hub import ModelInfo
        from huggingface_hub.utils import get_session, hf_raise_for_status

        params: dict[str, Any] = {
            "search": query or "wan",
            "sort": SORTS[sort],
            "limit": fetch,
            "expand": _SEARCH_FIELDS,
        }
        try:
            response = get_session().get(
                f"{self.endpoint}/api/models", params=params, headers=self._headers(token), timeout=timeout
            )
            hf_raise_for_status(response)
            items = response.json()
        except Exception as exc:
            raise self._fail(exc, repo=None, action="search for LoRAs") from None
        if not isinstance(items, list):
            raise HubError("The Hugging Face Hub answered the search with something unexpected; try again.")
        models = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                item.setdefault("siblings", None)
                with contextlib.suppress(Exception):
                    models.append(ModelInfo(**item))
        return models

    def _summarise(self, model) -> RepoSummary:
        card = _card_dict(getattr(model, "card_data", None))
        tags = [t for t in (model.tags or []) if isinstance(t, str)]
        bases = hub_card.base_models(tags, card)
        card_tags = hub_card.as_texts(card.get("tags"))
        versions = hub_card.wan_versions(bases) or hub_card.wan_versions([model.id, *tags, *card_tags])
        task_texts = [*tags, *bases, model.id, *([model.pipeline_tag] if model.pipeline_tag else [])]
        return RepoSummary(
            repo_id=model.id,
            author=model.author or (model.id.split("/")[0] if "/" in model.id else None),
            downloads=int(model.downloads or 0),
            likes=int(model.likes or 0),
            last_modified=_iso(model.last_modified),
            sha=model.sha,
            tags=tags,
            pipeline_tag=model.pipeline_tag,
            library_name=model.library_name,
            base_models=bases,
            wan_versions=versions,
            tasks=hub_card.tasks_of(task_texts),
            is_lora=hub_card.looks_like_lora(model.id, tags, model.library_name, card),
            gated=bool(model.gated),
            private=bool(model.private),
            summary=hub_card.card_summary(card),
            trigger_words=hub_card.card_triggers(card),
            example_prompts=hub_card.card_examples(card),
            url=f"{self.endpoint}/{model.id}",
        )

    def _add_readmes(self, results: list[RepoSummary], token: str | None, timeout: float) -> None:
        wanted = [r for r in results if r.summary is None or not r.trigger_words]

        def fetch(r: RepoSummary) -> tuple[str | None, list[str]]:
            key = (self.endpoint, r.repo_id, r.sha or r.last_modified, _token_key(token))
            with self._lock:
                if key in self._readme_cache:
                    return self._readme_cache[key]
            text = self._readme(r.repo_id, r.sha, token, min(timeout, README_TIMEOUT_S))
            found = (hub_card.readme_summary(text), hub_card.readme_triggers(text)) if text else (None, [])
            with self._lock:
                if len(self._readme_cache) > 1000:
                    self._readme_cache.clear()
                self._readme_cache[key] = found
            return found

        if not wanted:
            return
        with ThreadPoolExecutor(
            max_workers=min(_WORKERS, len(wanted)), thread_name_prefix="hub-readme"
        ) as pool:
            for r, (summary, triggers) in zip(wanted, pool.map(fetch, wanted), strict=True):
                if r.summary is None:
                    r.summary = summary
                if not r.trigger_words:
                    r.trigger_words = triggers

    def _readme(self, repo: str, sha: str | None, token: str | None, timeout: float) -> str | None:
        """The first :data:`README_BYTES` of a repo's README (None when it has none or it fails)."""
        from huggingface_hub import hf_hub_url

        from studio.loras.hub_header import _range_get

        url = hf_hub_url(repo, "README.md", revision=sha or "main", endpoint=self.endpoint)
        try:
            data, _ = _range_get(url, self._headers(token), 0, README_BYTES - 1, timeout)
        except Exception as exc:  # a README is a nicety: the search result stands without it
            log.debug("no README for %s (%s)", repo, type(exc).__name__)
            return None
        return data.decode("utf-8", "replace")

    # -- files ----------------------------------------------------------------------------------------------
    def _model_info(self, repo: str, revision: str | None, token: str | None, timeout: float, action: str):
        try:
            return self._api().model_info(
                repo, revision=revision, files_metadata=True, timeout=timeout, token=token
            )
        except Exception as exc:
            raise self._fail(exc, repo=repo, action=action) from None

    def files(
        self,
        repo: str,
        revision: str | None = None,
        model_config: Mapping[str, Any] | None = None,
        *,
        model_name: str | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        max_headers: int = MAX_HEADERS,
    ) -> RepoFiles:
        """The repo's ``.safetensors`` files at ``revision``, each inspected from its remote header."""
        repo = check_repo_id(repo)
        revision = (revision or "").strip() or None
        tok = self._token_for(token)
        timeout = self._timeout(timeout_s)
        info = self._model_info(repo, revision, tok, timeout, "list LoRA files")
        sha = info.sha
        if not isinstance(sha, str) or not sha:
            raise HubError(f"The Hugging Face Hub did not say which commit of {repo} it lists; try again.")
        siblings = {s.rfilename: s for s in (info.siblings or [])}
        names = sorted(n for n in siblings if n.lower().endswith(SAFETENSORS_SUFFIX))
        refused = sorted(n for n in siblings if PurePosixPath(n).suffix.lower() in PICKLE_SUFFIXES)
        inspected, skipped = names[:max_headers], names[max_headers:]

        def read(name: str) -> tuple[LoraInfo | None, str | None]:
            key = (self.endpoint, repo, sha, name, _token_key(tok))
            with self._lock:
                if key in self._header_cache:
                    return self._header_cache[key]
            found = self._read_header(repo, sha, name, siblings[name], tok, timeout)
            if found[0] is not None or (found[1] is not None and "not a valid" in found[1]):
                with self._lock:  # cache what the file is, not transient failures
                    self._header_cache[key] = found
            return found

        results: dict[str, tuple[LoraInfo | None, str | None]] = {}
        if inspected:
            with ThreadPoolExecutor(
                max_workers=min(_WORKERS, len(inspected)), thread_name_prefix="hub-header"
            ) as pool:
                results = dict(zip(inspected, pool.map(read, inspected), strict=True))

        root = RemoteName("/")
        group_input = [
            _File(RemoteName("/" + n), root, results.get(n, (None, None))[0], results.get(n, (None, None))[1])
            for n in inspected
        ]
        by_name: dict[str, RemoteFile] = {}
        for name in names:
            s = siblings[name]
            by_name[name] = RemoteFile(
                file=name,
                size=s.size,
                sha256=s.lfs.sha256 if s.lfs is not None else None,
                error=results[name][1] if name in results else None,
                downloaded=_cached_file(repo, name, sha) is not None,
            )
        items: list[RemoteItem] = []
        for lib in _group_files(group_input):
            rels = [r for r in (lib.rel_path, lib.high_rel_path, lib.low_rel_path) if r]
            for rel, lib_info in (
                (lib.rel_path, lib.info),
                (lib.high_rel_path, lib.high_info),
                (lib.low_rel_path, lib.low_info),
            ):
                if rel is None:
                    continue
                remote = by_name[rel]
                remote.info = lib_info
                if lib_info is not None and model_config is not None:
                    remote.compat = check_compat(lib_info, model_config, model_name=model_name)
            members = [by_name[r] for r in rels]
            items.append(
                RemoteItem(
                    id=hub_item_id(repo, sha, rels),
                    repo=repo,
                    revision=sha,
                    label=lib.label,
                    kind=lib.kind,
                    file=lib.rel_path,
                    high_file=lib.high_rel_path,
                    low_file=lib.low_rel_path,
                    expert=lib.expert,
                    size=sum(m.size or 0 for m in members),
                    compat=_worst(m.compat for m in members),
                    error=lib.error,
                    downloaded=all(m.downloaded for m in members),
                    sha256={m.file: m.sha256 for m in members if m.sha256},
                )
            )
        items.sort(key=lambda it: (it.file or it.high_file or "").lower())
        notes = []
        errors = {f.error for f in by_name.values() if f.error}
        if inspected and len(errors) == 1 and all(by_name[n].error for n in inspected):
            notes.append(errors.pop())
        if skipped:
            notes.append(
                f"{len(skipped)} more .safetensors files were listed without reading their headers "
                f"(only the first {max_headers} are read)."
            )
        if refused:
            notes.append(
                f"{len(refused)} pickle file(s) ({', '.join(refused[:3])}{'…' if len(refused) > 3 else ''}) are "
                "not offered: the studio only loads .safetensors LoRAs."
            )
        return RepoFiles(
            repo=repo,
            revision=revision or "main",
            sha=sha,
            last_modified=_iso(info.last_modified),
            gated=bool(info.gated),
            private=bool(info.private),
            files=[by_name[n] for n in names],
            items=items,
            refused=refused,
            not_inspected=skipped,
            notes=notes,
        )

    def _read_header(
        self, repo: str, sha: str, name: str, sibling, token: str | None, timeout: float
    ) -> tuple[LoraInfo | None, str | None]:
        from huggingface_hub import hf_hub_url

        from studio.loras.hub_header import inspect_remote

        url = hf_hub_url(repo, name, revision=sha, endpoint=self.endpoint)
        try:
            info = inspect_remote(
                url,
                self._headers(token),
                file=name,
                file_size=sibling.size,
                sha256=sibling.lfs.sha256 if sibling.lfs is not None else None,
                shown_path=f"hf://{repo}@{sha}/{name}",
                timeout=timeout,
            )
        except StudioError as exc:
            return None, str(exc)
        except Exception as exc:
            return None, self._fail(exc, repo=repo, action="read LoRA headers").args[0]
        return info, None

    # -- downloads ------------------------------------------------------------------------------------------
    def download(
        self,
        repo: str,
        files: Sequence[str] | str,
        revision: str | None = None,
        progress: Progress | None = None,
        *,
        cancel: Cancel | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        verify: bool = True,
        expected_sha256: Mapping[str, str] | None = None,
    ) -> list[Path]:
        """Download ``files`` of ``repo`` at ``revision`` (pinned to its commit); their local paths, in order.

        ``progress(done_bytes, total_bytes)`` counts the bytes still to fetch (files already here count
        for nothing); ``cancel`` (an Event, a ``CancelToken`` or a callable) stops the download and removes
        the partial file. ``expected_sha256`` (file → sha256, e.g. from a preset) refuses files that changed.
        """
        repo = check_repo_id(repo)
        names = list(
            dict.fromkeys(_check_file_name(f) for f in ([files] if isinstance(files, str) else files))
        )
        if not names:
            raise ValidationError("Name at least one file to download.")
        revision = (revision or "").strip() or "main"
        tok = self._token_for(token)
        timeout = self._timeout(timeout_s)
        expected = dict(expected_sha256 or {})

        # A commit sha whose files are all here (and are the files expected): nothing to ask the Hub.
        if _SHA_RE.match(revision):
            paths = [_cached_file(repo, n, revision) for n in names]
            if all(p is not None for p in paths) and self._match(names, paths, expected):
                for name, path in zip(names, paths, strict=True):
                    assert path is not None
                    self._register(repo, name, revision, None, path, verify=verify)
                if progress is not None:
                    progress(0, 0)
                return [p for p in paths if p is not None]

        info = self._model_info(repo, revision, tok, timeout, "download LoRAs")
        sha = info.sha
        if not isinstance(sha, str) or not sha:
            raise HubError(f"The Hugging Face Hub did not say which commit of {repo} to download; try again.")
        siblings = {s.rfilename: s for s in (info.siblings or [])}
        for name in names:
            if name not in siblings:
                raise HubError(
                    f"{name} is not in {repo} at revision {revision}; refresh the file list (it may have been "
                    "renamed or removed)."
                )
            lfs = siblings[name].lfs
            want = expected.get(name)
            if want and lfs is not None and lfs.sha256 != want:
                raise HubError(
                    f"{name} in {repo} at revision {revision} is not the file that was saved (its sha256 "
                    "differs); pick the file again from the Hub panel, or name the commit it came from."
                )
        _write_ref(repo, revision, sha)
        todo = [n for n in names if _cached_file(repo, n, sha) is None]
        total = sum(int(siblings[n].size or 0) for n in todo)
        done = shown = 0
        lock = threading.Lock()

        def on_update(n: int) -> None:
            nonlocal done, shown
            with lock:
                done += n  # may step back when a resumed download has to start over
                shown = max(shown, min(done, total))
                now = shown
            if progress is not None:
                progress(now, total)
            if _is_cancelled(cancel):
                raise DownloadCancelled()

        if progress is not None:
            progress(0, total)
        paths: list[Path] = []
        for name in names:
            if _is_cancelled(cancel):
                raise DownloadCancelled()
            path = self._fetch(repo, name, sha, tok, timeout, on_update if name in todo else None)
            lfs = siblings[name].lfs
            self._register(repo, name, sha, lfs.sha256 if lfs is not None else None, path, verify=verify)
            paths.append(path)
        if progress is not None:
            progress(total, total)
        return paths

    def _match(self, names: list[str], paths: list[Path | None], expected: Mapping[str, str]) -> bool:
        """Whether the local files have the expected sha256s (hashed once, then remembered)."""
        for name, path in zip(names, paths, strict=True):
            if name in expected and path is not None:
                try:
                    if file_sha256(path, cache_dir=self.cache_dir) != expected[name]:
                        return False
                except OSError:
                    return False
        return True

    def _fetch(self, repo: str, name: str, sha: str, token: str | None, timeout: float, on_update) -> Path:
        from huggingface_hub import hf_hub_download

        def reporter(**kwargs: Any) -> _Reporter:
            return _Reporter(on_update or (lambda n: None), **kwargs)

        try:
            return Path(
                hf_hub_download(
                    repo,
                    name,
                    revision=sha,
                    token=token,
                    etag_timeout=timeout,
                    tqdm_class=reporter,  # type: ignore[arg-type]
                )
            )
        except StudioError:  # DownloadCancelled from the progress hook
            raise
        except Exception as exc:
            raise self._fail(exc, repo=repo, action="download LoRAs") from None

    def _register(
        self, repo: str, name: str, sha: str, sha256: str | None, path: Path, *, verify: bool
    ) -> None:
        """Check the file against the Hub's sha256 (removing a damaged one) and record it in the registry."""
        known = next(
            (
                e
                for e in _load_registry(self.cache_dir)
                if (e["repo"], e["file"], e["revision"]) == (repo, name, sha)
            ),
            None,
        )
        if known is not None and (sha256 is None or known.get("sha256") == sha256):
            return
        actual = None
        if verify or sha256 is None:
            try:
                actual = file_sha256(path, cache_dir=self.cache_dir)
            except OSError as exc:
                raise HubError(
                    f"{name} from {repo} cannot be read after downloading it ({exc.strerror})."
                ) from None
        if sha256 is not None and actual is not None and actual != sha256:
            blob = path.resolve()
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                blob.unlink()
            raise HubError(
                f"{name} from {repo} arrived damaged (its sha256 does not match the Hub's), so it was removed; "
                "download it again."
            )
        _record_download(
            self.cache_dir,
            {
                "repo": repo,
                "file": name,
                "revision": sha,
                "sha256": sha256 or actual,
                "size": path.stat().st_size,
                "downloaded_at": _iso(datetime.now(timezone.utc)),
            },
        )

    # -- presets --------------------------------------------------------------------------------------------
    def missing(self, stack_or_sources: Stack | Iterable[StackEntry | LoraSource]) -> list[LoraSource]:
        """The Hub files a stack (enabled entries) or a list of sources names that are not downloaded."""
        return missing(stack_or_sources)

    def download_sources(
        self,
        sources: Iterable[LoraSource],
        progress: Progress | None = None,
        *,
        cancel: Cancel | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> list[Path]:
        """Download exactly these Hub sources (grouped per repo and revision); their paths, in order."""
        groups: dict[tuple[str, str | None], list[LoraSource]] = {}
        for s in _hub_sources(list(sources)):
            groups.setdefault((str(s.repo), s.revision), []).append(s)
        paths: dict[tuple, Path] = {}
        for (repo, revision), group in groups.items():
            expected = {str(s.file): s.sha256 for s in group if s.sha256}
            got = self.download(
                repo,
                [str(s.file) for s in group],
                revision,
                progress,
                cancel=cancel,
                token=token,
                timeout_s=timeout_s,
                expected_sha256=expected,
            )
            for s, p in zip(group, got, strict=True):
                paths[(s.repo, s.file, s.revision)] = p
        return [paths[(s.repo, s.file, s.revision)] for s in _hub_sources(list(sources))]

    def resolve(self, source: LoraSource) -> Path:
        """The local file of a Hub source (no network); :class:`LoraFileError` when it is not downloaded."""
        return resolve(source)

    # -- what is here ---------------------------------------------------------------------------------------
    def downloaded(self) -> list[tuple[LoraSource, Path]]:
        """The files the studio downloaded that are still in the cache, with their Hub sources."""
        return downloaded(self.cache_dir)

    def library_items(self) -> list[HubLibraryItem]:
        """The downloaded files as library items (pairs grouped), converting to Hub stack entries."""
        return library_items(self.cache_dir)
