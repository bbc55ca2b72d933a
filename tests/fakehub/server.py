"""A loopback fake of the Hugging Face Hub HTTP API, for the real ``huggingface_hub`` client.

Two ``ThreadingHTTPServer`` listeners on 127.0.0.1 (port 0, background threads):

* the **Hub** (``FakeHub.url``): the JSON API under ``/api/...`` and the ``/{repo}/resolve/...`` file URLs;
* the **CDN** (``FakeHub.cdn_url``): where LFS files are redirected to, like ``cdn-lfs.hf.co``. It listens on
  another port, so it is another origin for the client: a ``HEAD`` on an LFS file stops at the Hub's 302 and
  reads ``X-Linked-Etag`` / ``X-Linked-Size`` from it, and the ``GET`` goes to the CDN without the token, exactly
  as against huggingface.co.

Repos are served from in-memory bytes or from files on disk (read in chunks). Files that git-lfs would track
(the Hub's default ``.gitattributes`` patterns, or anything of 10 MB and more) are LFS files: the tree and
``blobs=true`` model info carry their ``lfs`` block, ``/resolve`` redirects them to the CDN. Xet storage is not
emulated (no ``X-Xet-Hash`` header), so the client downloads over plain HTTP, as for legacy LFS repos.

Endpoints (model repos; ``{repo}`` is ``namespace/name`` or a legacy single-part id):

``GET /api/models``
    Search: ``search`` (case-insensitive substring of the id, every value must match), ``author``
    (namespace), ``filter`` (every value must be a tag, the library or the pipeline tag), ``pipeline_tag``,
    ``library``, ``gated``; ``sort`` (``downloads``, ``likes``, ``lastModified``, ``createdAt``,
    ``trendingScore``, ``id``) with ``direction`` (``-1``, the default, is descending); ``limit`` (page size,
    at most ``page_size``) and cursor pagination through a ``Link: <...>; rel="next"`` header; without ``sort``
    repos come in creation order. Each item has the Hub's default list fields (``_id``, ``id``, ``modelId``,
    ``likes``, ``trendingScore``, ``private``, ``downloads``, ``tags``, ``pipeline_tag``, ``library_name``,
    ``createdAt``); ``full=true`` adds ``author``, ``sha``, ``lastModified``, ``gated``, ``disabled`` and
    ``siblings`` (``rfilename`` only); ``cardData=true`` adds ``cardData``; ``config=true`` adds ``config``;
    ``expand=...`` (or ``expand[]``) returns exactly the named properties. Private repos are only listed for
    a token that may see them.
``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``
    Model info: ``_id``, ``id``, ``modelId``, ``author``, ``sha`` (the resolved commit), ``lastModified``,
    ``createdAt``, ``private``, ``disabled``, ``gated``, ``downloads``, ``downloadsAllTime``, ``likes``,
    ``trendingScore``, ``library_name``, ``pipeline_tag``, ``tags``, ``cardData``, ``siblings``, ``spaces``,
    ``usedStorage``. With ``blobs=true`` each sibling has ``size``, ``blobId`` and, for LFS files,
    ``lfs: {sha256, size, pointerSize}``. ``expand`` selects properties. Gated repos answer (their metadata is
    public, as on the Hub); private repos answer 401/404 ``RepoNotFound`` without a granted token; an unknown
    revision is 404 ``RevisionNotFound``.
``GET /api/models/{repo}/tree/{rev}[/{path}]``
    ``recursive``, ``expand`` (adds ``lastCommit`` and ``securityFileStatus``), entries
    ``{type: file|directory, oid, size, path[, lfs: {oid, size, pointerSize}]}`` in git order; pages of
    ``tree_page_size`` entries (``tree_page_size_expand`` with ``expand``) linked with ``Link: rel="next"``.
``POST /api/models/{repo}/paths-info/{rev}``, ``GET /api/models/{repo}/refs``, ``GET /api/whoami-v2``,
``GET /api/agent-harnesses`` (an empty registry)
``GET|HEAD /{repo}/resolve/{rev}/{path}``
    ``X-Repo-Commit``, ``ETag`` (the git blob id), ``Content-Length``, ``Accept-Ranges``, ``Content-Disposition``;
    LFS files: ``302`` with ``Location`` on the CDN, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``.
    ``Range`` gives 206 (416 when unsatisfiable). Text files are gzip-encoded for a client that accepts it and
    asks for no range (``gzip_text``), like the Hub's compressible files. Missing files: 404 ``EntryNotFound``
    with ``X-Repo-Commit``; gated repos without a granted token: 401 (no token) / 403 (token) ``GatedRepo``.
``GET|HEAD {cdn}/repos/..../{sha256}?response-content-disposition=...``
    The LFS blob, with ``Range`` support.

Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers and a JSON ``{"error": ...}`` body.

Fault injection (``fail``, ``delay``, ``drop``) matches a glob (``fnmatch``: ``*`` also crosses ``/``) against
the request's URL path (unquoted, no query: ``/api/models/*``, ``/Org/Repo/resolve/main/*``,
``/repos/*``) **or**, for file requests on the Hub and the CDN, against the file's path in the repo
(``*.safetensors``, ``transformer/*``); ``method=`` and ``host=`` ("hub" or "cdn") narrow it, ``times=``
bounds how often it fires (``None``: always). Every request is logged in ``FakeHub.requests``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import gzip
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses plain-git files of 10 MB and more

# The patterns of the Hub's default .gitattributes (files created with a new repo).
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS)

TEXT_SUFFIXES = {".json", ".txt", ".md", ".py", ".yaml", ".yml", ".csv", ".jinja", ".gitattributes"}

# What the Hub answers for each injected status unless told otherwise: (X-Error-Code, X-Error-Message).
DEFAULT_ERRORS: dict[int, tuple[str | None, str]] = {
    400: (None, "Bad request"),
    401: ("RepoNotFound", "Invalid username or password."),
    403: (None, "You don't have the rights to access this resource."),
    404: ("RepoNotFound", "Repository not found"),
    408: (None, "Request Timeout"),
    429: (None, "You have exceeded our hourly quotas for action: resolve. We invite you to retry later."),
    500: (None, "Internal Error - We're working hard to fix this as soon as possible!"),
    502: (None, "Bad Gateway"),
    503: (None, "Service Unavailable"),
    504: (None, "Gateway Timeout"),
}

MODEL_LIST_FIELDS = (
    "_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name",
    "createdAt", "modelId",
)  # fmt: skip
MODEL_FULL_EXTRA_FIELDS = ("author", "sha", "lastModified", "gated", "disabled", "siblings")
EXPANDABLE = {
    "author", "cardData", "config", "createdAt", "disabled", "downloads", "downloadsAllTime", "gated",
    "lastModified", "library_name", "likes", "pipeline_tag", "private", "sha", "siblings", "spaces", "tags",
    "trendingScore", "usedStorage",
}  # fmt: skip
SORT_KEYS = {"downloads", "likes", "lastModified", "createdAt", "trendingScore", "id"}

_UNSET: Any = object()


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _as_datetime(value: datetime | str | None, default: datetime) -> datetime:
    if value is None:
        return default
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def unused_loopback_url() -> str:
    """A ``http://127.0.0.1:PORT`` URL nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"


# --------------------------------------------------------------------------------------------------------------
# Repos
# --------------------------------------------------------------------------------------------------------------


class Blob:
    """File content (bytes, or a file on disk read in chunks) with the hashes the Hub exposes."""

    def __init__(self, source: bytes | Path):
        self.source = source
        sha256, md5 = hashlib.sha256(), hashlib.md5()
        if isinstance(source, bytes):
            self.size = len(source)
            sha1 = hashlib.sha1(b"blob %d\0" % self.size)
            for h in (sha256, md5, sha1):
                h.update(source)
        else:
            self.size = source.stat().st_size
            sha1 = hashlib.sha1(b"blob %d\0" % self.size)
            with source.open("rb") as f:
                while chunk := f.read(1 << 20):
                    for h in (sha256, md5, sha1):
                        h.update(chunk)
        self.sha256 = sha256.hexdigest()
        self.md5 = md5.hexdigest()
        self.git_oid = sha1.hexdigest()

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes ``[start, end)`` in chunks."""
        end = self.size if end is None else end
        if isinstance(self.source, bytes):
            for pos in range(start, end, CHUNK):
                yield self.source[pos : min(pos + CHUNK, end)]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                chunk = f.read(min(CHUNK, end - pos))
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk

    def content(self) -> bytes:
        return b"".join(self.read())


@dataclass
class RepoFileEntry:
    """One file of a commit, as the Hub describes it."""

    path: str
    blob: Blob
    lfs: bool

    @property
    def size(self) -> int:
        return self.blob.size

    @property
    def sha256(self) -> str:
        return self.blob.sha256

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer file for LFS files."""
        return _git_oid(self.pointer) if self.lfs else self.blob.git_oid

    @property
    def etag(self) -> str:
        """What the client keys its cache blobs on: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.blob.git_oid

    def lfs_info(self) -> dict | None:
        return {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)} if self.lfs else None


@dataclass
class Commit:
    sha: str
    files: dict[str, RepoFileEntry]
    title: str
    date: datetime


@dataclass
class FakeRepo:
    """A model repo on the fake Hub. ``files``/``sha`` are those of ``main``; older commits stay addressable."""

    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag → commit sha
    gated: str | bool = False  # False, "auto" or "manual"
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens allowed past gating / privacy
    tags: list[str] | None = None
    card_data: dict | None = None
    downloads: int = 0
    downloads_all_time: int | None = None
    likes: int = 0
    trending_score: int = 0
    pipeline_tag: str | None = None
    library_name: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    last_modified: datetime | None = None
    disabled: bool = False
    spaces: list[str] = field(default_factory=list)
    mongo_id: str = ""

    @property
    def sha(self) -> str:
        return self.refs["main"]

    @property
    def files(self) -> dict[str, RepoFileEntry]:
        return self.commits[self.sha].files

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def author(self) -> str | None:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else None

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        matches = [sha for sha in self.commits if len(revision) >= 7 and sha.startswith(revision)]
        return matches[0] if len(matches) == 1 else None

    def commit_date(self, sha: str) -> datetime:
        return self.commits[sha].date

    def derived_tags(self, files: Mapping[str, RepoFileEntry]) -> list[str]:
        if self.tags is not None:
            return list(self.tags)
        card = self.card_data or {}
        tags: list[str] = []
        library = self._library(files)
        if library:
            tags.append(library)
        if any(p.endswith(".safetensors") for p in files):
            tags.append("safetensors")
        card_tags = card.get("tags") or []
        tags.extend([card_tags] if isinstance(card_tags, str) else card_tags)
        if self.pipeline_tag or card.get("pipeline_tag"):
            tags.append(self.pipeline_tag or card["pipeline_tag"])
        languages = card.get("language") or []
        tags.extend([languages] if isinstance(languages, str) else languages)
        if card.get("license"):
            tags.append(f"license:{card['license']}")
        class_name = _diffusers_class(files)
        if class_name:
            tags.append(f"diffusers:{class_name}")
        tags.append("region:us")
        return list(dict.fromkeys(str(t) for t in tags))

    def _library(self, files: Mapping[str, RepoFileEntry]) -> str | None:
        if self.library_name:
            return self.library_name
        if self.card_data and self.card_data.get("library_name"):
            return self.card_data["library_name"]
        return "diffusers" if "model_index.json" in files else None

    def _pipeline_tag(self) -> str | None:
        return self.pipeline_tag or (self.card_data or {}).get("pipeline_tag")

    def _config(self, files: Mapping[str, RepoFileEntry]) -> dict:
        class_name = _diffusers_class(files)
        if class_name:
            return {"diffusers": {"_class_name": class_name}}
        entry = files.get("config.json")
        if entry is not None and entry.size < 1_000_000:
            try:
                raw = json.loads(entry.blob.content())
            except ValueError:
                return {}
            return {k: raw[k] for k in ("architectures", "model_type") if k in raw}
        return {}

    def properties(self, sha: str, *, blobs: bool) -> dict[str, Any]:
        """Every property the Hub can return for this repo at commit ``sha``."""
        files = self.commits[sha].files
        siblings = []
        for path in sorted(files):
            entry = files[path]
            item: dict[str, Any] = {"rfilename": path}
            if blobs:
                item["size"] = entry.size
                item["blobId"] = entry.oid
                if entry.lfs:
                    item["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(item)
        props: dict[str, Any] = {
            "_id": self.mongo_id,
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.author,
            "sha": sha,
            "lastModified": _iso(self.last_modified or self.commit_date(sha)),
            "createdAt": _iso(self.created_at),
            "private": self.private,
            "disabled": self.disabled,
            "gated": self.gated,
            "downloads": self.downloads,
            "downloadsAllTime": self.downloads
            if self.downloads_all_time is None
            else self.downloads_all_time,
            "likes": self.likes,
            "trendingScore": self.trending_score,
            "library_name": self._library(files),
            "pipeline_tag": self._pipeline_tag(),
            "tags": self.derived_tags(files),
            "cardData": self.card_data,
            "config": self._config(files),
            "siblings": siblings,
            "spaces": list(self.spaces),
            "usedStorage": sum(f.size for f in files.values()),
        }
        return props


def _diffusers_class(files: Mapping[str, RepoFileEntry]) -> str | None:
    entry = files.get("model_index.json")
    if entry is None:
        return None
    try:
        return json.loads(entry.blob.content()).get("_class_name")
    except ValueError:
        return None


def _parse_card(text: str) -> dict | None:
    if not text.startswith("---"):
        return None
    parts = text.split("\n---", 1)
    if len(parts) < 2:
        return None
    import yaml

    data = yaml.safe_load(parts[0][3:])
    return data if isinstance(data, dict) else None


def _render_card(card: dict, repo_id: str) -> str:
    import yaml

    return f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n# {repo_id.split('/')[-1]}\n"


# --------------------------------------------------------------------------------------------------------------
# Faults and the request log
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected misbehaviour; see :meth:`FakeHub.fail`, :meth:`FakeHub.delay` and :meth:`FakeHub.drop`."""

    kind: str  # "fail", "delay" or "drop"
    glob: str
    times: int | None = None  # how many more times it fires; None: always
    method: str | None = None
    host: str | None = None  # "hub" or "cdn"
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    after_bytes: int | None = None  # drop: bytes of the body sent before the connection is cut
    fired: int = 0

    def matches(self, record: RequestRecord) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and record.method != self.method.upper():
            return False
        if self.host and record.host != self.host:
            return False
        return fnmatch.fnmatchcase(record.path, self.glob) or (
            record.file is not None and fnmatch.fnmatchcase(record.file, self.glob)
        )

    def consume(self) -> None:
        self.fired += 1
        if self.times is not None:
            self.times -= 1


@dataclass
class RequestRecord:
    """One request the fake received (appended when it arrives, completed when answered)."""

    method: str
    host: str  # "hub" or "cdn"
    path: str  # the URL path, unquoted, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    time: float
    url: str = ""
    repo_id: str | None = None
    revision: str | None = None
    file: str | None = None  # the file's path in the repo, for /resolve and CDN requests
    tree_path: str | None = None  # the folder of a /tree request
    status: int | None = None  # None until answered
    bytes_sent: int = 0  # body bytes written
    dropped: bool = False  # the connection was cut mid-body
    faults: list[str] = field(default_factory=list)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


# --------------------------------------------------------------------------------------------------------------
# The servers
# --------------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: FakeHub, role: str):
        self.hub, self.role = hub, role
        super().__init__((LOOPBACK, 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub
    server_version = "FakeHub/1.0"
    sys_version = ""
    timeout = 15  # an idle keep-alive connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = RequestRecord(
            method=method,
            host=self.server.role,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            time=time.time(),
            url=self.path,
        )
        hub._log(record)
        drop = None
        try:
            try:
                route = hub._route(self.server.role, method, split.path, record)
            except _HttpError as err:  # unknown page: faults still apply first
                route = err
            faults = hub._faults_for(record)
            for fault in faults:
                if fault.kind == "delay":
                    record.faults.append(f"delay {fault.seconds}s")
                    hub._stopping.wait(fault.seconds)
            for fault in faults:
                if fault.kind == "fail":
                    record.faults.append(f"fail {fault.status}")
                    self._send(fault.status, fault.body, fault.headers, record)
                    return
            if isinstance(route, _HttpError):
                raise route
            drop = next((f for f in faults if f.kind == "drop"), None)
            if drop is not None:
                record.faults.append("drop")
            status, headers, payload = route(record, body)
        except _HttpError as err:
            status, headers, payload = hub._error(err)
            drop = None
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for the test to see
            hub.server_errors.append(exc)
            status, headers, payload = hub._error(_HttpError(500, f"fake hub error: {exc!r}"))
            drop = None
        if isinstance(payload, bytes):
            self._send(status, payload, headers, record, drop=drop)
        else:
            self._send_stream(status, headers, payload, record, drop=drop)

    def _start(self, status: int, headers: Mapping[str, str], record: RequestRecord) -> None:
        record.status = status
        self.send_response(status)
        headers = {"X-Request-Id": f"Root={uuid.uuid4()}", **headers}
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()

    def _send(
        self,
        status: int,
        payload: bytes,
        headers: Mapping[str, str],
        record: RequestRecord,
        drop: Fault | None = None,
    ) -> None:
        headers = {"Content-Length": str(len(payload)), **headers}
        self._send_stream(status, headers, iter([payload]), record, drop=drop)

    def _send_stream(
        self,
        status: int,
        headers: Mapping[str, str],
        chunks: Iterable[bytes],
        record: RequestRecord,
        drop: Fault | None = None,
    ) -> None:
        try:
            self._start(status, headers, record)
        except OSError:  # the client went away (e.g. it timed out during a delay)
            self.close_connection = True
            return
        if record.method == "HEAD":
            return
        limit = None
        if drop is not None:
            total = int(headers.get("Content-Length", 0))
            limit = drop.after_bytes if drop.after_bytes is not None else total // 2
            limit = max(0, min(limit, total - 1))
        # The log is updated *before* each write: once the client has the bytes, the record already says so.
        try:
            for chunk in chunks:
                if limit is not None and record.bytes_sent + len(chunk) >= limit:
                    chunk = chunk[: limit - record.bytes_sent]
                    record.bytes_sent += len(chunk)
                    record.dropped = True
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                record.bytes_sent += len(chunk)
                self.wfile.write(chunk)
        except OSError:  # BrokenPipe, ConnectionReset: the client went away
            self.close_connection = True


class FakeHub:
    """The fake Hub: start it (context manager or :meth:`start`), add repos, inject faults, read the log.

    ``page_size`` bounds ``/api/models`` pages, ``tree_page_size`` (``tree_page_size_expand`` with
    ``expand=true``) the tree pages, as the Hub does with 1000 and 50.
    """

    def __init__(
        self,
        *,
        page_size: int = 1000,
        tree_page_size: int = 1000,
        tree_page_size_expand: int = 50,
        gzip_text: bool = True,
    ):
        self.page_size = page_size
        self.tree_page_size = tree_page_size
        self.tree_page_size_expand = tree_page_size_expand
        self.gzip_text = gzip_text
        self.user = {"name": "fake-user", "tokens": set()}  # tokens that /api/whoami-v2 accepts
        self._repos: dict[str, FakeRepo] = {}
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._cdn_index: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.cdn_url = ""
        self.env: Any = None  # the HubEnv the fixture switched the client to, if any
        self.server_errors: list[BaseException] = []  # exceptions raised inside the fake (its own bugs)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        if self._servers:
            return self
        self._stopping.clear()
        for role in ("hub", "cdn"):
            server = _Server(self, role)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fakehub-{role}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://{LOOPBACK}:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://{LOOPBACK}:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- repos -----------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path] | Path | str,
        *,
        sha: str | None = None,
        branch: str = "main",
        commit_message: str = "Upload folder using huggingface_hub",
        gated: str | bool = False,
        private: bool = False,
        tokens: Iterable[str] = (),
        tags: Iterable[str] | None = None,
        card: dict | str | None = None,
        downloads: int = 0,
        likes: int = 0,
        trending_score: int = 0,
        pipeline_tag: str | None = None,
        library_name: str | None = None,
        created_at: datetime | str | None = None,
        last_modified: datetime | str | None = None,
        lfs: Iterable[str] | Callable[[str, int], bool] | None = None,
        gitattributes: bool = True,
        spaces: Iterable[str] = (),
    ) -> FakeRepo:
        """Add a model repo (or, for an existing one, a new commit on ``branch``) and return it.

        ``files`` maps paths in the repo to bytes, text or a file on disk, or is a folder whose files are served
        (hidden entries like ``.cache`` are skipped). ``gated`` is ``False``, ``"auto"`` or ``"manual"``
        (``True`` means ``"auto"``): metadata and tree stay public, file downloads need a token from ``tokens``.
        ``private`` hides the repo from anyone without such a token. ``tags=None`` derives the tags the Hub
        would compute (library, ``safetensors``, card tags, pipeline tag, languages, ``license:``,
        ``diffusers:<class>``, ``region:us``); a list is used as is. ``card`` is the card metadata (a dict,
        written as ``README.md`` front matter when the files have no README) or a whole README text.
        ``lfs`` overrides which paths are LFS files (a list, or ``f(path, size) -> bool``); by default the
        Hub's ``.gitattributes`` patterns and the 10 MB rule decide. ``gitattributes`` adds the Hub's default
        ``.gitattributes`` file, as the Hub does when a repo is created.

        Calling it again for the same repo adds a commit holding exactly ``files`` (older commits stay
        reachable by sha) and replaces the metadata with the arguments given (``created_at`` is kept).
        """
        sources = self._collect(files)
        if isinstance(card, dict) and "README.md" not in sources:
            sources["README.md"] = _render_card(card, repo_id).encode()
        elif isinstance(card, str):
            sources["README.md"] = card.encode()
        if gitattributes and ".gitattributes" not in sources:
            sources[".gitattributes"] = DEFAULT_GITATTRIBUTES.encode()
        card_data = card if isinstance(card, dict) else None
        if card_data is None and "README.md" in sources:
            readme = sources["README.md"]
            text = readme.decode("utf-8", "replace") if isinstance(readme, bytes) else readme.read_text()
            card_data = _parse_card(text)

        lfs_paths = None if lfs is None or callable(lfs) else set(lfs)
        entries: dict[str, RepoFileEntry] = {}
        for path, source in sources.items():
            blob = Blob(source)
            if callable(lfs):
                is_lfs = bool(lfs(path, blob.size))
            elif lfs_paths is not None:
                is_lfs = path in lfs_paths
            else:
                is_lfs = _is_lfs_path(path) or blob.size >= LFS_SIZE_THRESHOLD
            entries[path] = RepoFileEntry(path=path, blob=blob, lfs=is_lfs)

        with self._lock:
            repo = self._repos.get(repo_id)
            now = datetime.now(timezone.utc)
            if repo is None:
                repo = FakeRepo(
                    repo_id=repo_id,
                    created_at=_as_datetime(created_at, now),
                    mongo_id=hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                )
                self._repos[repo_id] = repo
            if sha is None:
                sha = hashlib.sha1(f"{repo_id}\0{len(repo.commits)}\0{sorted(entries)}".encode()).hexdigest()
                for entry in entries.values():
                    sha = hashlib.sha1((sha + entry.path + entry.sha256).encode()).hexdigest()
            if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"sha must be 40 lower-case hex digits, got {sha!r}")
            repo.commits[sha] = Commit(sha=sha, files=entries, title=commit_message, date=now)
            repo.refs[branch] = sha
            repo.gated = "auto" if gated is True else gated
            repo.private = private
            repo.tokens = set(tokens)
            repo.tags = list(tags) if tags is not None else None
            repo.card_data = card_data
            repo.downloads, repo.likes, repo.trending_score = downloads, likes, trending_score
            repo.pipeline_tag, repo.library_name = pipeline_tag, library_name
            repo.last_modified = _as_datetime(last_modified, now) if last_modified is not None else None
            repo.spaces = list(spaces)
            if created_at is not None:
                repo.created_at = _as_datetime(created_at, now)
            return repo

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            self._repos.pop(repo_id, None)

    def repo(self, repo_id: str) -> FakeRepo:
        return self._repos[repo_id]

    @property
    def repos(self) -> dict[str, FakeRepo]:
        return dict(self._repos)

    @staticmethod
    def _collect(files: Mapping[str, bytes | str | Path] | Path | str) -> dict[str, bytes | Path]:
        if isinstance(files, (str, Path)):
            folder = Path(files)
            if not folder.is_dir():
                raise ValueError(f"{folder} is not a folder")
            found: dict[str, bytes | Path] = {}
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if path.is_file() and not any(part.startswith(".") for part in rel.parts[:-1]):
                    if rel.name.startswith(".") and rel.name != ".gitattributes":
                        continue
                    found[rel.as_posix()] = path
            return found
        out: dict[str, bytes | Path] = {}
        for path, value in files.items():
            out[path.strip("/")] = value.encode() if isinstance(value, str) else value
        return out

    # ---- faults and log --------------------------------------------------------------------------------------

    def fail(
        self,
        glob: str,
        status: int,
        *,
        times: int | None = None,
        method: str | None = None,
        host: str | None = None,
        error_code: str | None = _UNSET,
        message: str | None = None,
        retry_after: int | None = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer matching requests with ``status`` and the Hub's error headers.

        ``error_code`` is the ``X-Error-Code`` (default: ``RepoNotFound`` for 401 and 404, none otherwise; pass
        ``"GatedRepo"``, ``"EntryNotFound"``, ``"RevisionNotFound"`` or ``None``); ``message`` the
        ``X-Error-Message`` and JSON ``error``. A 429 carries ``Retry-After: retry_after`` and the Hub's
        ``RateLimit`` headers (``r=0``), so the client waits ``retry_after + 1`` seconds before a retry.
        """
        code, default_message = DEFAULT_ERRORS.get(status, (None, f"Error {status}"))
        if error_code is not _UNSET:
            code = error_code
        if code == "GatedRepo" and message is None:
            default_message = (
                "Access to this model is restricted. You must have access to it and be authenticated."
            )
        message = message or default_message
        fault_headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Error-Message": message,
        }
        if code:
            fault_headers["X-Error-Code"] = code
        if status == 429 and retry_after is not None:
            fault_headers["Retry-After"] = str(retry_after)
            fault_headers["RateLimit"] = f'"api";r=0;t={retry_after}'
            fault_headers["RateLimit-Policy"] = '"fixed window";"api";q=500;w=300'
        fault_headers.update(headers or {})
        fault = Fault(
            kind="fail",
            glob=glob,
            times=times,
            method=method,
            host=host,
            status=status,
            headers=fault_headers,
            body=json.dumps({"error": message}).encode(),
        )
        return self._add_fault(fault)

    def delay(
        self,
        glob: str,
        seconds: float,
        *,
        times: int | None = None,
        method: str | None = None,
        host: str | None = None,
    ) -> Fault:
        """Wait ``seconds`` (at most 60) before answering matching requests (cut short when the fake stops).

        Mind that some client calls (``model_info``, ``list_models``) wait forever by default: pass them a
        ``timeout`` when the delay is meant to outlast it.
        """
        if not 0 <= seconds <= 60:
            raise ValueError("delay() takes 0 to 60 seconds, to keep tests bounded")
        return self._add_fault(
            Fault(kind="delay", glob=glob, times=times, method=method, host=host, seconds=seconds)
        )

    def drop(
        self,
        glob: str,
        *,
        after_bytes: int | None = None,
        times: int | None = 1,
        method: str | None = "GET",
        host: str | None = None,
    ) -> Fault:
        """Send the headers and ``after_bytes`` of the body (default: half), then cut the connection."""
        return self._add_fault(
            Fault(kind="drop", glob=glob, times=times, method=method, host=host, after_bytes=after_bytes)
        )

    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _faults_for(self, record: RequestRecord) -> list[Fault]:
        with self._lock:
            fired = [f for f in self._faults if f.matches(record)]
            for fault in fired:
                fault.consume()
            return fired

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(
        self, glob: str = "*", *, method: str | None = None, host: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests whose URL path or repo file path matches ``glob`` (and ``method`` / ``host``)."""
        probe = Fault(kind="probe", glob=glob, method=method, host=host)
        return [r for r in self.requests if probe.matches(r)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---- routing ---------------------------------------------------------------------------------------------

    def _route(self, role: str, method: str, raw_path: str, record: RequestRecord):
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        if role == "cdn":
            if method in ("GET", "HEAD") and len(segments) >= 2 and segments[0] == "repos":
                key = (segments[-2], segments[-1])
                repo_id, path = self._cdn_index.get(key, (None, None))
                record.repo_id, record.file = repo_id, path
                return self._cdn_file
            raise _HttpError(403, "AccessDenied")
        if segments[:1] == ["api"]:
            return self._route_api(method, segments[1:], record)
        if method in ("GET", "HEAD") and "resolve" in segments[1:3]:
            i = segments.index("resolve", 1)
            if len(segments) < i + 3:
                raise _HttpError(404, "Entry not found", "EntryNotFound")
            record.repo_id = "/".join(segments[:i])
            record.revision = segments[i + 1]
            record.file = "/".join(segments[i + 2 :])
            return self._resolve
        raise _HttpError(404, "Sorry, we can't find the page you are looking for.")

    def _route_api(self, method: str, segs: list[str], record: RequestRecord):
        if segs == ["models"] and method == "GET":
            return self._list_models
        if segs == ["agent-harnesses"] and method == "GET":
            return lambda rec, body: self._json({"standardEnvVars": [], "harnesses": {}})
        if segs == ["whoami-v2"] and method == "GET":
            return self._whoami
        if len(segs) >= 2 and segs[0] == "models":
            rest = segs[1:]
            keywords = {"revision", "tree", "refs", "paths-info"}
            cut = 2 if len(rest) >= 2 and rest[1] not in keywords else 1
            record.repo_id = "/".join(rest[:cut])
            tail = rest[cut:]
            if not tail and method == "GET":
                record.revision = "main"
                return self._model_info
            if tail[:1] == ["revision"] and len(tail) >= 2 and method == "GET":
                record.revision = "/".join(tail[1:])
                return self._model_info
            if tail[:1] == ["tree"] and len(tail) >= 2 and method == "GET":
                record.revision = tail[1]
                record.tree_path = "/".join(tail[2:]) or None
                return self._tree
            if tail == ["refs"] and method == "GET":
                return self._refs
            if tail[:1] == ["paths-info"] and len(tail) >= 2 and method == "POST":
                record.revision = "/".join(tail[1:])
                return self._paths_info
        raise _HttpError(404, "Sorry, we can't find the page you are looking for.")

    # ---- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None):
        payload = json.dumps(data).encode()
        return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, payload

    @staticmethod
    def _error(err: _HttpError):
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Error-Message": err.message,
            **err.headers,
        }
        if err.code:
            headers["X-Error-Code"] = err.code
        return err.status, headers, json.dumps({"error": err.message}).encode()

    def _visible_repo(self, record: RequestRecord) -> FakeRepo:
        """The record's repo if this client may see it; the Hub's 401/404 RepoNotFound otherwise."""
        repo = self._repos.get(record.repo_id or "")
        token = record.token
        if repo is None or (repo.private and token not in repo.tokens):
            if token is None:
                raise _HttpError(401, "Invalid username or password.", "RepoNotFound")
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: FakeRepo, revision: str) -> Commit:
        sha = repo.resolve(revision)
        if sha is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    @staticmethod
    def _flag(query: Mapping[str, list[str]], name: str) -> bool:
        values = query.get(name) or []
        return bool(values) and values[-1].lower() in ("1", "true", "yes")

    @staticmethod
    def _expand(query: Mapping[str, list[str]]) -> list[str]:
        values = (query.get("expand") or []) + (query.get("expand[]") or [])
        expand = [v for value in values for v in value.split(",") if v]
        unknown = [v for v in expand if v not in EXPANDABLE]
        if unknown:
            raise _HttpError(400, f'"expand" must be one of {sorted(EXPANDABLE)}, got {unknown}')
        return expand

    # ---- /api/models -----------------------------------------------------------------------------------------

    def _list_models(self, record: RequestRecord, body: bytes):
        q = record.query
        expand = self._expand(q)
        full, card_data, config = self._flag(q, "full"), self._flag(q, "cardData"), self._flag(q, "config")
        if expand and (full or card_data or config):
            raise _HttpError(400, '"expand" cannot be used with "full", "cardData" or "config"')
        with self._lock:
            repos = list(self._repos.values())
        token = record.token
        results = []
        for repo in repos:
            if repo.private and token not in repo.tokens:
                continue
            props = repo.properties(repo.sha, blobs=False)
            haystack = repo.repo_id.lower()
            if not all(s.lower() in haystack for s in q.get("search", []) if s):
                continue
            if q.get("author") and (repo.author or "").lower() != q["author"][-1].lower():
                continue
            labels = {t.lower() for t in props["tags"]} | {
                str(props["library_name"] or "").lower(),
                str(props["pipeline_tag"] or "").lower(),
            }
            if not all(f.lower() in labels for f in q.get("filter", [])):
                continue
            if q.get("pipeline_tag") and props["pipeline_tag"] != q["pipeline_tag"][-1]:
                continue
            if q.get("library") and (props["library_name"] or "") not in q["library"]:
                continue
            if q.get("gated"):
                want_gated = q["gated"][-1].lower() == "true"
                if bool(repo.gated) != want_gated:
                    continue
            results.append(props)
        sort = (q.get("sort") or [None])[-1]
        if sort:
            if sort not in SORT_KEYS:
                raise _HttpError(400, f'"sort" must be one of {sorted(SORT_KEYS)}, got {sort!r}')
            descending = (q.get("direction") or ["-1"])[-1] != "1"
            results.sort(key=lambda p: (p[sort] is None, p[sort]), reverse=descending)

        if expand:
            fields = ["_id", "id", *expand]
        else:
            fields = list(MODEL_LIST_FIELDS)
            if full:
                fields += MODEL_FULL_EXTRA_FIELDS
            if card_data:
                fields.append("cardData")
            if config:
                fields.append("config")
        items = [{k: p[k] for k in fields if k in p} for p in results]

        limit = int((q.get("limit") or [self.page_size])[-1])
        page_size = max(1, min(limit, self.page_size))
        start = self._cursor_offset(q)
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            headers["Link"] = self._next_link(record, start + page_size)
        return self._json(page, headers=headers)

    @staticmethod
    def _cursor_offset(query: Mapping[str, list[str]]) -> int:
        cursor = (query.get("cursor") or [""])[-1]
        if not cursor:
            return 0
        try:
            return int(json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())["offset"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _HttpError(400, "Invalid cursor") from exc

    def _next_link(self, record: RequestRecord, offset: int) -> str:
        query = {k: v for k, v in record.query.items() if k != "cursor"}
        query["cursor"] = [base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()]
        path = urlsplit(record.url).path
        return f'<{self.url}{path}?{urlencode(query, doseq=True)}>; rel="next"'

    def _model_info(self, record: RequestRecord, body: bytes):
        repo = self._visible_repo(record)
        commit = self._commit(repo, record.revision or "main")
        props = repo.properties(commit.sha, blobs=self._flag(record.query, "blobs"))
        expand = self._expand(record.query)
        if expand:
            props = {k: props[k] for k in ["_id", "id", *expand]}
        elif props["cardData"] is None:
            del props["cardData"]
        return self._json(props)

    def _refs(self, record: RequestRecord, body: bytes):
        repo = self._visible_repo(record)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in repo.refs.items()
            if not name.startswith("refs/")
        ]
        data = {"branches": branches, "converts": [], "tags": []}
        if self._flag(record.query, "include_prs"):
            data["pullRequests"] = []
        return self._json(data)

    def _whoami(self, record: RequestRecord, body: bytes):
        if record.token is None or record.token not in self.user["tokens"]:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return self._json(
            {"type": "user", "name": self.user["name"], "orgs": [], "auth": {"type": "access_token"}}
        )

    # ---- trees -----------------------------------------------------------------------------------------------

    @staticmethod
    def _tree_entries(commit: Commit) -> list[dict]:
        """Every file and folder of a commit, in git order (a folder before its content)."""
        folders: dict[str, list[str]] = {}
        for path in commit.files:
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.setdefault("/".join(parts[:i]), []).append(path)
        entries = []
        for folder, paths in folders.items():
            listing = "".join(f"{p[len(folder) + 1 :]}\0{commit.files[p].oid}\n" for p in sorted(paths))
            oid = hashlib.sha1(listing.encode()).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
        for path, entry in commit.files.items():
            item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size}
            if entry.lfs:
                item["lfs"] = entry.lfs_info()
            item["path"] = path
            entries.append(item)
        entries.sort(key=lambda e: e["path"].split("/"))
        return entries

    def _tree(self, record: RequestRecord, body: bytes):
        repo = self._visible_repo(record)
        commit = self._commit(repo, record.revision or "main")
        base = (record.tree_path or "").strip("/")
        entries = self._tree_entries(commit)
        if base:
            if not any(e["path"] == base and e["type"] == "directory" for e in entries):
                raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            entries = [e for e in entries if e["path"].startswith(base + "/")]
        if not self._flag(record.query, "recursive"):
            depth = base.count("/") + 1 if base else 0
            entries = [e for e in entries if e["path"].count("/") == depth]
        expand = self._flag(record.query, "expand")
        if expand:
            entries = [self._expand_entry(e, commit) for e in entries]
        page_size = self.tree_page_size_expand if expand else self.tree_page_size
        start = self._cursor_offset(record.query)
        headers = {"X-Repo-Commit": commit.sha}
        if start + page_size < len(entries):
            headers["Link"] = self._next_link(record, start + page_size)
        return self._json(entries[start : start + page_size], headers=headers)

    @staticmethod
    def _expand_entry(entry: dict, commit: Commit) -> dict:
        entry = dict(entry)
        entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": _iso(commit.date)}
        if entry["type"] == "file":
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _paths_info(self, record: RequestRecord, body: bytes):
        repo = self._visible_repo(record)
        commit = self._commit(repo, record.revision or "main")
        form = parse_qs(body.decode(), keep_blank_values=True)
        wanted = [p.strip("/") for p in form.get("paths", [])]
        expand = (form.get("expand") or ["False"])[-1].lower() == "true"
        by_path = {e["path"]: e for e in self._tree_entries(commit)}
        found = [by_path[p] for p in wanted if p in by_path]
        if expand:
            found = [self._expand_entry(e, commit) for e in found]
        return self._json(found)

    # ---- files -----------------------------------------------------------------------------------------------

    def _resolve(self, record: RequestRecord, body: bytes):
        repo = self._visible_repo(record)
        commit = self._commit(repo, record.revision or "main")
        entry = commit.files.get(record.file or "")
        if entry is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        if repo.gated and record.token not in repo.tokens:
            if record.token is None:
                message = (
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                raise _HttpError(401, message, "GatedRepo")
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.url}/{repo.repo_id} to ask for access."
            )
            raise _HttpError(403, message, "GatedRepo")
        name = entry.path.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        common = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes", "Vary": "Origin, Accept"}
        if entry.lfs:
            repo_hash = hashlib.sha256(repo.repo_id.encode()).hexdigest()[:40]
            self._cdn_index[(repo_hash, entry.sha256)] = (repo.repo_id, entry.path)
            query = urlencode(
                {
                    "response-content-disposition": disposition,
                    "response-content-type": "application/octet-stream",
                    "Expires": str(int(time.time()) + 3600),
                    "Signature": secrets.token_hex(16),
                    "Key-Pair-Id": "FAKEHUBKEYPAIR",
                }
            )
            location = (
                f"{self.cdn_url}/repos/{repo_hash[:2]}/{repo_hash[2:4]}/{repo_hash}/{entry.sha256}?{query}"
            )
            text = f"Found. Redirecting to {location}".encode()
            headers = {
                **common,
                "Location": location,
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
                "ETag": f'W/"{len(text):x}-{hashlib.sha1(text).hexdigest()[:27]}"',
                "Content-Type": "text/plain; charset=utf-8",
            }
            return 302, headers, text
        headers = {**common, "ETag": f'"{entry.blob.git_oid}"', "Content-Disposition": disposition}
        return self._file_response(record, entry.blob, headers, name, allow_gzip=True)

    def _cdn_file(self, record: RequestRecord, body: bytes):
        sha256 = record.path.rsplit("/", 1)[-1]
        blob = self._find_blob(sha256)
        if blob is None:
            raise _HttpError(403, "AccessDenied")
        headers = {
            "ETag": f'"{blob.md5}"',
            "Accept-Ranges": "bytes",
            "Last-Modified": "Mon, 28 Jul 2025 07:30:17 GMT",
            "Cache-Control": "public, max-age=604800, immutable",
            "X-Cache": "Hit from cloudfront",
        }
        disposition = (record.query.get("response-content-disposition") or [None])[-1]
        if disposition:
            headers["Content-Disposition"] = disposition
        content_type = (record.query.get("response-content-type") or ["binary/octet-stream"])[-1]
        return self._file_response(record, blob, headers, record.file or sha256, content_type=content_type)

    def _find_blob(self, sha256: str) -> Blob | None:
        with self._lock:
            for repo in self._repos.values():
                for commit in repo.commits.values():
                    for entry in commit.files.values():
                        if entry.lfs and entry.sha256 == sha256:
                            return entry.blob
        return None

    def _file_response(
        self,
        record: RequestRecord,
        blob: Blob,
        headers: dict[str, str],
        name: str,
        *,
        allow_gzip: bool = False,
        content_type: str | None = None,
    ):
        headers = {"Content-Type": content_type or _content_type(name), **headers}
        size = blob.size
        range_header = record.range
        if range_header:
            span = _parse_range(range_header, size)
            if span is None:
                return 416, {**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"}, b""
            if span is not False:
                start, end = span
                headers.update(
                    {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start)}
                )
                return 206, headers, blob.read(start, end)
        accepts_gzip = "gzip" in record.headers.get("accept-encoding", "")
        if (
            allow_gzip
            and self.gzip_text
            and accepts_gzip
            and not range_header
            and record.method == "GET"
            and Path(name).suffix.lower() in TEXT_SUFFIXES | {""}
            and size < 50_000_000
        ):
            payload = gzip.compress(blob.content(), mtime=0)
            headers.update({"Content-Encoding": "gzip", "Content-Length": str(len(payload))})
            headers["Vary"] = "Origin, Accept, Accept-Encoding"
            return 200, headers, payload
        headers["Content-Length"] = str(size)
        return 200, headers, blob.read()


def _is_lfs_path(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    for pattern in DEFAULT_LFS_PATTERNS:
        if "/" in pattern:
            if fnmatch.fnmatchcase(path, pattern.replace("**/", "*")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix == ".json":
        return "application/json; charset=utf-8"
    if suffix in TEXT_SUFFIXES or name == ".gitattributes":
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """``(start, end)`` (end exclusive), ``None`` if unsatisfiable, ``False`` if ignored (multi/invalid)."""
    header = header.strip()
    if not header.lower().startswith("bytes=") or "," in header:
        return False
    spec = header[6:].strip()
    start_s, _, end_s = spec.partition("-")
    try:
        if not start_s:
            suffix = int(end_s)
            if suffix <= 0:
                return None
            return max(0, size - suffix), size
        start = int(start_s)
        end = int(end_s) + 1 if end_s else size
    except ValueError:
        return False
    if start >= size or end <= start:
        return None
    return start, min(end, size)


def iso_days_ago(days: float) -> str:
    """An ISO timestamp ``days`` ago, handy for ``created_at`` / ``last_modified``."""
    return _iso(datetime.now(timezone.utc) - timedelta(days=days))
