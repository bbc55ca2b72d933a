"""Pinned, resumable, sha256-checked downloads of Hub LoRA files, and the presets' Hub sources (part of
:class:`studio.hub.client.HubClient`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from studio.errors import StudioError, ValidationError
from studio.hub.common import (
    SHA_RE,
    Cancel,
    DownloadCancelled,
    HubError,
    HubLibraryItem,
    Progress,
    Reporter,
    cached_file,
    check_file_name,
    check_repo_id,
    is_cancelled,
    iso_time,
    write_ref,
)
from studio.hub.registry import (
    downloaded,
    hub_sources,
    library_items,
    load_registry,
    missing,
    record_download,
    resolve,
)
from studio.loras.hashing import file_sha256
from studio.stack.schema import LoraSource, Stack, StackEntry


class DownloadMixin:
    """``HubClient.download`` and what is already here."""

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
            dict.fromkeys(check_file_name(f) for f in ([files] if isinstance(files, str) else files))
        )
        if not names:
            raise ValidationError("Name at least one file to download.")
        revision = (revision or "").strip() or "main"
        tok = self._token_for(token)
        timeout = self._timeout(timeout_s)
        expected = dict(expected_sha256 or {})

        # A commit sha whose files are all here (and are the files expected): nothing to ask the Hub.
        if SHA_RE.match(revision):
            paths = [cached_file(repo, n, revision) for n in names]
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
        write_ref(repo, revision, sha)
        todo = [n for n in names if cached_file(repo, n, sha) is None]
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
            if is_cancelled(cancel):
                raise DownloadCancelled()

        if progress is not None:
            progress(0, total)
        paths: list[Path] = []
        for name in names:
            if is_cancelled(cancel):
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

        def reporter(**kwargs: Any) -> Reporter:
            return Reporter(on_update or (lambda n: None), **kwargs)

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
                for e in load_registry(self.cache_dir)
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
        record_download(
            self.cache_dir,
            {
                "repo": repo,
                "file": name,
                "revision": sha,
                "sha256": sha256 or actual,
                "size": path.stat().st_size,
                "downloaded_at": iso_time(datetime.now(timezone.utc)),
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
        for s in hub_sources(list(sources)):
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
        return [paths[(s.repo, s.file, s.revision)] for s in hub_sources(list(sources))]

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
