"""A fake Hugging Face Hub on loopback, so the real ``huggingface_hub`` client runs unmodified in tests.

What it is
    :class:`~fakehub.server.FakeHub` runs two stdlib ``ThreadingHTTPServer`` listeners on 127.0.0.1 (port 0,
    background threads): the Hub API / ``resolve`` URLs, and a CDN on a second port that LFS files are
    redirected to (a different origin, as ``cdn-lfs.hf.co`` is for huggingface.co). Nothing else is ever
    contacted. The endpoints, headers and error answers are described in :mod:`fakehub.server`.

How the client is pointed at it (the choice)
    In process, not in a subprocess. ``huggingface_hub`` copies ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``
    and the paths derived from them into ``huggingface_hub.constants`` at import time, so setting the
    environment variables alone does nothing once it is imported. :class:`~fakehub.env.HubEnv` sets the
    environment variables *and* the constants (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``,
    ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_HUB_CACHE``, token paths, the cache paths imported by name elsewhere,
    the module-level ``HfApi``'s endpoint), turns telemetry off, clears any ``HF_TOKEN``, closes the shared HTTP
    session, and restores all of it on exit. Running the studio code in process keeps the tests fast (no second
    import of torch/diffusers) and lets them use the studio's own functions and exceptions directly; a
    subprocess started inside ``HubEnv`` inherits the same environment, so it would see the fake too.

Use
    ``fake_hub`` (a pytest fixture in :mod:`fakehub.fixtures`) starts a hub and switches the client to it with
    ``HF_HOME`` in the test's ``tmp_path``::

        def test_something(fake_hub):
            repo = fake_hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": path})
            fake_hub.fail("*/resolve/*/model.safetensors", 500, times=1)
            fake_hub.delay("/api/models*", 0.2)
            fake_hub.drop("model.safetensors", host="cdn", after_bytes=1000)  # cut one download mid-body
            ...  # call huggingface_hub / the studio
            assert fake_hub.requests_for("*.safetensors", method="GET", host="cdn")
            fake_hub.env.switch(offline=True)  # or endpoint=unused_loopback_url(), token="hf_..."

    Outside pytest: ``with FakeHub() as hub, HubEnv(hub.url, tmp_dir): ...``.

Import the package as ``fakehub`` (pytest puts ``tests/`` on ``sys.path``; ``tests`` itself is no package).
"""

from .env import HubEnv
from .server import (
    DEFAULT_GITATTRIBUTES,
    FakeHub,
    FakeRepo,
    Fault,
    RepoFileEntry,
    RequestRecord,
    iso_days_ago,
    unused_loopback_url,
)

__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "FakeHub",
    "FakeRepo",
    "Fault",
    "HubEnv",
    "RepoFileEntry",
    "RequestRecord",
    "iso_days_ago",
    "unused_loopback_url",
]
