"""A repo's files and their safetensors headers read remotely, before any download (part of
:class:`studio.hub.client.HubClient`).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from studio.errors import StudioError
from studio.hub.common import (
    MAX_HEADERS,
    WORKERS,
    HubError,
    RemoteFile,
    RemoteItem,
    RepoFiles,
    cached_file,
    check_repo_id,
    iso_time,
    token_key,
    worst_compat,
)
from studio.hub.header import RemoteName
from studio.hub.registry import hub_item_id
from studio.loras.compat import check_compat
from studio.loras.inspect import LoraInfo
from studio.loras.library import _File, _group_files
from studio.loras.safetensors_io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX


class RemoteFilesMixin:
    """``HubClient.files``: a repo's LoRA files, each inspected from its remote header."""

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
            key = (self.endpoint, repo, sha, name, token_key(tok))
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
                max_workers=min(WORKERS, len(inspected)), thread_name_prefix="hub-header"
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
                downloaded=cached_file(repo, name, sha) is not None,
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
                    compat=worst_compat(m.compat for m in members),
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
            last_modified=iso_time(info.last_modified),
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

        from studio.hub.header import inspect_remote

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
