"""The studio's model download path against the fake Hub (``fakehub``): the real client, loopback only.

The demo model folder is served as ``Wan-AI/Wan2.2-I2V-A14B-Diffusers``, so what is downloaded is a real
diffusers Wan2.2 pipeline that ``WanImageToVideoPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakehub import FakeHub, unused_loopback_url

from studio.errors import ModelError
from studio.hub.models import download_model, hub_download_size
from studio.models import registry as models
from studio.models.registry import REGISTRY, local_weights
from studio.settings import Settings

A14B = REGISTRY["wan2.2-i2v-a14b"]
REPO = A14B.repo_id
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
WEIGHTS_2 = "transformer_2/diffusion_pytorch_model.safetensors"

OFFLINE = (
    "The Hugging Face Hub is switched off (HF_HUB_OFFLINE is set); unset it to download models from the Hub."
)
GATED = (
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers needs you to accept its licence on huggingface.co and an access token "
    "(set HF_TOKEN or type one in); then try again."
)
NOT_FOUND = "Wan-AI/Wan2.2-I2V-A14B-Diffusers was not found on the Hugging Face Hub; check the name or your access token."
UNREACHABLE_START = "The Hugging Face Hub cannot be reached (no connection"
UNREACHABLE_END = "); check the network connection and try again. The rest of the studio keeps working."


@pytest.fixture
def wan_repo(fake_hub: FakeHub, demo_model_dir: Path):
    return fake_hub.add_repo(REPO, demo_model_dir, pipeline_tag="image-to-video")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_download_size_is_the_sum_of_the_hub_file_sizes(fake_hub, wan_repo, demo_model_dir):
    on_disk = sum(len(b) for b in _files(demo_model_dir).values())
    gitattributes = wan_repo.files[".gitattributes"].size
    assert hub_download_size(A14B) == on_disk + gitattributes == wan_repo.total_size
    (request,) = fake_hub.requests
    assert request.path == f"/api/models/{REPO}" and request.query == {"blobs": ["true"]}


def test_download_reports_progress_then_loads(fake_hub, wan_repo, demo_model_dir):
    assert local_weights(A14B) is None
    events: list[tuple[int, int]] = []
    path = download_model(A14B, lambda done, total: events.append((done, total)))

    assert path.parent.parent == fake_hub.env.cache_dir / "models--Wan-AI--Wan2.2-I2V-A14B-Diffusers"
    assert path.name == wan_repo.sha
    served = {name: entry.blob.content() for name, entry in wan_repo.files.items()}
    assert _files(path) == served
    assert {name: data for name, data in served.items() if name != ".gitattributes"} == _files(demo_model_dir)
    assert fake_hub.server_errors == []

    # Progress: bytes, growing to the end. The client counts each distinct blob once (the two experts'
    # identical config.json share one), so the last total is the deduplicated size, not hub_download_size.
    distinct = {entry.etag: entry.size for entry in wan_repo.files.values()}
    final = sum(distinct.values())
    assert len(events) >= 5
    assert events[-1] == (final, final)
    assert final <= wan_repo.total_size
    assert all(0 <= done <= total <= final for done, total in events)
    highs = [max(done for done, _ in events[: i + 1]) for i in range(len(events))]
    assert len(set(highs)) >= 4  # several steps, not one jump at the end

    assert local_weights(A14B) == path

    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(path)
    assert pipe.transformer is not None and pipe.transformer_2 is not None
    assert pipe.config.boundary_ratio == pytest.approx(0.875)


def test_second_download_fetches_nothing(fake_hub, wan_repo):
    first = download_model(A14B)
    fake_hub.clear_requests()
    assert download_model(A14B) == first
    assert [r.path for r in fake_hub.requests] == [f"/api/models/{REPO}/revision/main"]


def test_default_model_prefers_downloaded_a14b_on_a_gpu(fake_hub, wan_repo, monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    settings = Settings(model=None)
    assert models.default_model_name(settings) == "demo"
    download_model(A14B)
    assert models.default_model_name(settings) == A14B.name


def test_dropped_connection_resumes_mid_file(fake_hub, wan_repo, monkeypatch):
    from huggingface_hub import constants

    # The client keeps what it received in whole DOWNLOAD_CHUNK_SIZE chunks (10 MB); shrink them so a
    # 127 kB file resumes the way a multi-GB one does.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    fake_hub.drop(WEIGHTS, host="cdn", after_bytes=50_000)
    path = download_model(A14B)
    assert (path / WEIGHTS).read_bytes() == wan_repo.files[WEIGHTS].blob.content()
    gets = fake_hub.requests_for(WEIGHTS, host="cdn", method="GET")
    assert [(r.status, r.dropped) for r in gets] == [(200, True), (206, False)]
    assert gets[1].range == f"bytes={gets[0].bytes_sent // 4096 * 4096}-"


def _downloaded(hub: FakeHub) -> set[str]:
    """Repo files whose content was sent in full (a 200 GET, on the Hub or the CDN)."""
    return {r.file for r in hub.requests if r.method == "GET" and r.status == 200 and r.file}


def test_failed_download_resumes_with_the_missing_files_only(fake_hub, wan_repo):
    fake_hub.fail(WEIGHTS_2, 500, host="cdn")
    with pytest.raises(ModelError) as caught:
        download_model(A14B)
    assert "server error (HTTP 500)" in str(caught.value)
    assert local_weights(A14B) is None  # the snapshot folder exists, but files are missing
    first = _downloaded(fake_hub)
    assert first and WEIGHTS_2 not in first  # (files not started yet when it failed were cancelled)

    fake_hub.clear_faults()
    fake_hub.clear_requests()
    path = download_model(A14B)
    assert _files(path) == {name: entry.blob.content() for name, entry in wan_repo.files.items()}
    second = _downloaded(fake_hub)
    assert WEIGHTS_2 in second
    assert not first & second  # nothing that was already on disk is fetched again
    assert local_weights(A14B) == path


def test_a_transient_server_error_on_one_file_is_retried(fake_hub, wan_repo):
    fake_hub.fail(f"*/resolve/*/{WEIGHTS}", 503, method="HEAD", times=1)
    path = download_model(A14B)
    assert (path / WEIGHTS).exists()
    heads = fake_hub.requests_for(f"*/resolve/*/{WEIGHTS}", method="HEAD")
    assert [r.status for r in heads] == [503, 302]


# ---- failures: each is a ModelError with hub_failure_message's sentence ---------------------------------------


def _offline(hub: FakeHub) -> None:
    hub.env.switch(offline=True)


def _closed_port(hub: FakeHub) -> None:
    hub.env.switch(endpoint=unused_loopback_url())


def _status(status: int, **kwargs):
    def inject(hub: FakeHub) -> None:
        hub.fail("/api/models/*", status, **kwargs)

    return inject


def _gated(hub: FakeHub) -> None:
    files = {name: entry.blob.source for name, entry in hub.repo(REPO).files.items()}
    hub.add_repo(REPO, files, gated="manual")


def _absent(hub: FakeHub) -> None:
    hub.remove_repo(REPO)


def _expect(message: str, kind: str) -> None:
    if kind == "unreachable":
        assert message.startswith(UNREACHABLE_START) and message.endswith(UNREACHABLE_END), message
    else:
        expected = {
            "offline": OFFLINE,
            "gated": GATED,
            "not_found": NOT_FOUND,
            "rate_limited": "The Hugging Face Hub is rate-limiting requests (HTTP 429); wait a minute and try again.",
            "server_error": (
                "The Hugging Face Hub had a server error (HTTP 500); it may be having trouble, try again in a few "
                "minutes. The rest of the studio keeps working."
            ),
        }
        assert message == expected[kind]


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        pytest.param(_offline, "offline", id="offline"),
        pytest.param(_closed_port, "unreachable", id="connection-refused"),
        pytest.param(_status(401), "not_found", id="401"),
        pytest.param(_gated, "gated", id="gated"),
        pytest.param(_status(404), "not_found", id="404"),
        pytest.param(_absent, "not_found", id="no-such-repo"),
        pytest.param(_status(429, retry_after=30), "rate_limited", id="429"),
        pytest.param(_status(500), "server_error", id="500"),
    ],
)
def test_download_failures_are_model_errors(fake_hub, wan_repo, inject, kind):
    inject(fake_hub)
    with pytest.raises(ModelError) as caught:
        download_model(A14B)
    _expect(str(caught.value), kind)
    assert local_weights(A14B) is None


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        pytest.param(_offline, "offline", id="offline"),
        pytest.param(_closed_port, "unreachable", id="connection-refused"),
        pytest.param(_status(401), "not_found", id="401"),
        pytest.param(_status(404), "not_found", id="404"),
        pytest.param(_absent, "not_found", id="no-such-repo"),
        pytest.param(_status(429, retry_after=30), "rate_limited", id="429"),
        pytest.param(_status(500), "server_error", id="500"),
    ],
)
def test_download_size_failures_are_model_errors(fake_hub, wan_repo, inject, kind):
    inject(fake_hub)
    with pytest.raises(ModelError) as caught:
        hub_download_size(A14B)
    _expect(str(caught.value), kind)


def test_download_size_of_a_gated_repo_is_public(fake_hub, wan_repo):
    _gated(fake_hub)
    assert hub_download_size(A14B) == wan_repo.total_size
