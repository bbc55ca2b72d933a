"""The studio's view of the Hugging Face Hub: :class:`HubClient` and its plumbing (endpoint, token,
timeouts, errors). Searching lives in :mod:`studio.hub.search`, a repo's files and their remote headers
in :mod:`studio.hub.remote`, downloads in :mod:`studio.hub.downloads`; see :mod:`studio.hub`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from studio.hub.common import DEFAULT_CACHE_TTL_S, DEFAULT_TIMEOUT_S, HubError, RepoSummary, log
from studio.hub.downloads import DownloadMixin
from studio.hub.remote import RemoteFilesMixin
from studio.hub.search import SearchMixin
from studio.loras.inspect import LoraInfo


class HubClient(SearchMixin, RemoteFilesMixin, DownloadMixin):
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
        from studio.hub.errors import hub_failure_message

        message = hub_failure_message(exc, repo=repo, action=action)
        log.info("Hub call failed (%s): %s [%s]", action, message, type(exc).__name__)
        return HubError(message)

    def clear_cache(self) -> None:
        """Forget cached search results, READMEs and remote headers."""
        with self._lock:
            self._search_cache.clear()
            self._readme_cache.clear()
            self._header_cache.clear()
