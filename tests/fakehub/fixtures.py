"""Pytest fixtures for tests that talk to the fake Hub.

For the whole suite, ``tests/conftest.py`` imports them: ``from fakehub.fixtures import fake_hub  # noqa: F401``.
A single test module can bind it instead (``fake_hub = fakehub.fixtures.fake_hub``: an import would make ruff
flag every test argument named ``fake_hub`` as a redefinition, F811).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .env import HubEnv
from .server import FakeHub


@pytest.fixture
def fake_hub(tmp_path) -> Iterator[FakeHub]:
    """A running fake Hub, with the ``huggingface_hub`` client switched to it for the test.

    ``HF_HOME`` is ``tmp_path / "hf-home"`` (``fake_hub.env.cache_dir`` is its ``hub`` cache), offline mode is
    off, no token is set, telemetry is off. ``fake_hub.env`` is the :class:`~fakehub.env.HubEnv`:
    ``fake_hub.env.switch(offline=True)``, ``switch(endpoint=unused_loopback_url())`` or ``switch(token=...)``
    change the client's view for the rest of the test. Everything is restored afterwards.
    """
    with FakeHub() as hub, HubEnv(hub.url, tmp_path / "hf-home") as env:
        hub.env = env
        yield hub
        hub.env = None


@pytest.fixture
def guide_hub(fake_hub: FakeHub) -> FakeHub:
    """The fake Hub holding the repos the guide names (:mod:`fakehub.guide_repos`), in the demo model's shapes.

    ``guide_hub.guide_files`` is ``{repo: {file: bytes}}`` as served.
    """
    from .guide_repos import add_guide_repos

    fake_hub.guide_files = add_guide_repos(fake_hub)
    return fake_hub


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost")


@pytest.fixture
def loopback_only(monkeypatch) -> None:
    """Name lookups other than loopback fail, so not even a DNS query leaves the machine.

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("loopback_only")``.
    """
    real = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host not in LOOPBACK_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
