"""The registry of Hub downloads: which pinned files are in the HF cache, as library items and as the
files behind presets' Hub sources (what is missing, where a source resolves to).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from studio.errors import LoraFileError, StudioError, ValidationError
from studio.hub.common import (
    REGISTRY_FILE_NAME,
    REGISTRY_VERSION,
    SHA_RE,
    HubLibraryItem,
    cached_file,
    log,
    registry_lock,
)
from studio.loras.inspect import LoraInfo, inspect_lora
from studio.loras.library import _File, _group_files
from studio.media.files import write_cache_json
from studio.stack.schema import LoraSource, Stack, StackEntry

# ---------------------------------------------------------------------------------------------------------------
# The registry of downloads
# ---------------------------------------------------------------------------------------------------------------


def registry_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / REGISTRY_FILE_NAME


def load_registry(cache_dir: Path) -> list[dict]:
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
            and SHA_RE.match(e["revision"])
        ):
            good.append(e)
    return good


def record_download(cache_dir: Path, entry: dict) -> None:
    with registry_lock:
        entries = [
            e
            for e in load_registry(cache_dir)
            if (e["repo"], e["file"], e["revision"]) != (entry["repo"], entry["file"], entry["revision"])
        ]
        entries.append(entry)
        data = {"version": REGISTRY_VERSION, "files": entries}
        if not write_cache_json(registry_path(Path(cache_dir)), data):
            log.warning("cannot record the download of %s/%s", entry["repo"], entry["file"])


def downloaded(cache_dir: Path) -> list[tuple[LoraSource, Path]]:
    """The files the studio downloaded that are still in the Hugging Face cache (no network)."""
    out: list[tuple[LoraSource, Path]] = []
    for e in load_registry(cache_dir):
        path = cached_file(e["repo"], e["file"], e["revision"])
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


def hub_sources(stack_or_sources: Stack | Iterable[StackEntry | LoraSource]) -> list[LoraSource]:
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
    for source in hub_sources(stack_or_sources):
        try:
            resolve(source)
        except (LoraFileError, ValidationError):
            out.append(source)
    return out
