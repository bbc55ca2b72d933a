"""Point the in-process ``huggingface_hub`` client at an endpoint (the fake Hub) and restore it afterwards.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` & co. into
``huggingface_hub.constants`` when it is imported, and a few values are copied further at import time (the
URL template, cache paths imported by name, the ``endpoint`` of the module-level ``HfApi`` behind
``huggingface_hub.model_info`` & co.). :class:`HubEnv` sets the environment variables (for anything that reads
them later, and for subprocesses) **and** every one of those attributes, closes the client's shared HTTP
session (no pooled connection survives a switch), and puts everything back on exit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_MISSING: Any = object()

# Environment variables cleared for the duration, so a developer's own token or cache settings never leak in.
_CLEARED_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "TRANSFORMERS_OFFLINE",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HUGGINGFACE_CO_STAGING",
)


class HubEnv:
    """Switch the ``huggingface_hub`` client to ``endpoint`` with its home (token, caches) in ``hf_home``.

    Use as a context manager; :meth:`switch` changes endpoint, offline mode or token while inside.
    """

    def __init__(self, endpoint: str, hf_home: Path, *, offline: bool = False, token: str | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.hf_home = Path(hf_home)
        self.offline = offline
        self.token = token
        self._saved_env: dict[str, str | None] = {}
        self._saved_attrs: list[tuple[object, str, Any]] = []
        self._active = False

    @property
    def cache_dir(self) -> Path:
        """``HF_HUB_CACHE``: where ``snapshot_download`` puts repos."""
        return self.hf_home / "hub"

    def __enter__(self) -> HubEnv:
        self.hf_home.mkdir(parents=True, exist_ok=True)
        self._active = True
        for name in _CLEARED_ENV:
            self._set_env(name, None)
        self._apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_session()
        for obj, name, value in reversed(self._saved_attrs):
            if value is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_attrs.clear()
        self._saved_env.clear()
        self._active = False

    def switch(
        self, *, endpoint: str | None = None, offline: bool | None = None, token: str | Any | None = _MISSING
    ) -> None:
        """Change the endpoint (e.g. to a closed port), offline mode or token (``None``: no token)."""
        if endpoint is not None:
            self.endpoint = endpoint.rstrip("/")
        if offline is not None:
            self.offline = offline
        if token is not _MISSING:
            self.token = token
        self._apply()

    # ---- internals -------------------------------------------------------------------------------------------

    def _set_env(self, name: str, value: str | None) -> None:
        if name not in self._saved_env:
            self._saved_env[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def _set_attr(self, obj: object, name: str, value: Any) -> None:
        if not any(o is obj and n == name for o, n, _ in self._saved_attrs):
            self._saved_attrs.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    @staticmethod
    def _close_session() -> None:
        from huggingface_hub.utils import _http

        _http.close_session()

    def _apply(self) -> None:
        from huggingface_hub import constants, hf_api
        from huggingface_hub.utils import _cache_assets, _cache_manager

        home = str(self.hf_home)
        hub_cache = str(self.cache_dir)
        assets = str(self.hf_home / "assets")
        self._set_env("HF_ENDPOINT", self.endpoint)
        self._set_env("HF_HOME", home)
        self._set_env("HF_HUB_OFFLINE", "1" if self.offline else "0")
        self._set_env("HF_HUB_DISABLE_TELEMETRY", "1")
        self._set_env("HF_TOKEN", self.token)
        # A proxy from the environment must never see loopback traffic: the client reads these when its
        # session is created (closed below).
        for name in ("NO_PROXY", "no_proxy"):
            original = self._saved_env[name] if name in self._saved_env else os.environ.get(name)
            self._set_env(name, ",".join(filter(None, [original, "127.0.0.1", "localhost"])))

        c = constants
        self._set_attr(c, "ENDPOINT", self.endpoint)
        self._set_attr(
            c, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        host = urlsplit(self.endpoint).hostname
        self._set_attr(c, "HF_URL_HOSTS", frozenset(getattr(c, "HF_URL_HOSTS", frozenset()) | {host}))
        self._set_attr(c, "HF_HUB_OFFLINE", self.offline)
        self._set_attr(c, "HF_HUB_DISABLE_TELEMETRY", True)
        self._set_attr(c, "HF_HOME", home)
        self._set_attr(c, "default_cache_path", hub_cache)
        self._set_attr(c, "default_assets_cache_path", assets)
        self._set_attr(c, "HUGGINGFACE_HUB_CACHE", hub_cache)
        self._set_attr(c, "HUGGINGFACE_ASSETS_CACHE", assets)
        self._set_attr(c, "HF_HUB_CACHE", hub_cache)
        self._set_attr(c, "HF_ASSETS_CACHE", assets)
        self._set_attr(c, "HF_XET_CACHE", str(self.hf_home / "xet"))
        self._set_attr(c, "HF_TOKEN_PATH", str(self.hf_home / "token"))
        self._set_attr(c, "HF_STORED_TOKENS_PATH", str(self.hf_home / "stored_tokens"))
        self._set_attr(c, "CHECK_FOR_UPDATE_DONE_PATH", str(self.hf_home / ".check_for_update_done"))
        self._set_attr(c, "AGENT_HARNESSES_PATH", str(self.hf_home / ".agent_harnesses.json"))
        self._set_attr(_cache_manager, "HF_HUB_CACHE", hub_cache)
        self._set_attr(_cache_assets, "HF_ASSETS_CACHE", assets)
        self._set_attr(hf_api.api, "endpoint", self.endpoint)
        self._close_session()
