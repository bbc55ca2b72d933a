"""The fake Hub answers the real ``huggingface_hub`` client the way huggingface.co does."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save

from .server import DEFAULT_GITATTRIBUTES, FakeHub, unused_loopback_url

REPO = "acme/tiny-model"


def _safetensors(rows: int = 256) -> bytes:
    tensors = {
        "blocks.0.weight": np.arange(rows * 64, dtype=np.float32).reshape(rows, 64),
        "blocks.0.bias": np.ones(64, dtype=np.float16),
    }
    return save(tensors, metadata={"format": "pt"})


@pytest.fixture
def weights() -> bytes:
    return _safetensors()


@pytest.fixture
def repo(fake_hub: FakeHub, weights: bytes, tmp_path: Path):
    on_disk = tmp_path / "tokenizer.json"
    on_disk.write_text(json.dumps({"vocab": {f"w{i}": i for i in range(500)}}))
    return fake_hub.add_repo(
        REPO,
        {
            "config.json": b'{"model_type": "tiny", "architectures": ["TinyModel"]}',
            "model.safetensors": weights,
            "tokenizer/tokenizer.json": on_disk,
        },
        card={"license": "apache-2.0", "tags": ["lora", "wan"], "pipeline_tag": "image-to-video"},
        downloads=42,
        likes=7,
    )


# ---- search ---------------------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(fake_hub: FakeHub):
    specs = [
        ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", 900, 50, "2025-07-01", ["diffusers", "image-to-video"]),
        ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 700, 80, "2025-07-02", ["diffusers", "text-to-video"]),
        ("someone/wan22-anime-lora", 300, 5, "2025-08-01", ["lora", "image-to-video"]),
        ("someone/flux-lora", 1000, 3, "2025-06-01", ["lora", "text-to-image"]),
        ("other/WAN2.2-pixel-lora", 10, 1, "2025-09-01", ["lora", "image-to-video"]),
    ]
    for repo_id, downloads, likes, created, tags in specs:
        fake_hub.add_repo(
            repo_id,
            {"README.md": b"# card\n", "weights.safetensors": b"\0" * 16},
            downloads=downloads,
            likes=likes,
            created_at=created + "T00:00:00.000Z",
            last_modified=created + "T12:00:00.000Z",
            tags=tags,
        )
    return [s[0] for s in specs]


def test_list_models_search_is_case_insensitive_substring(fake_hub, catalogue):
    found = [m.id for m in HfApi().list_models(search="wan2.2")]
    assert found == [
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "other/WAN2.2-pixel-lora",
    ]
    request = fake_hub.requests_for("/api/models", method="GET")[-1]
    assert request.query["search"] == ["wan2.2"]


def test_list_models_filters_sort_and_fields(fake_hub, catalogue):
    api = HfApi()
    by_downloads = list(api.list_models(filter="lora", sort="downloads"))
    assert [m.id for m in by_downloads] == [
        "someone/flux-lora",
        "someone/wan22-anime-lora",
        "other/WAN2.2-pixel-lora",
    ]
    first = by_downloads[0]
    assert (first.downloads, first.likes, first.tags) == (1000, 3, ["lora", "text-to-image"])
    assert first.created_at.isoformat().startswith("2025-06-01")
    assert first.siblings is None and first.author is None  # not in the Hub's default list fields

    combined = [m.id for m in api.list_models(filter=["lora", "image-to-video"], author="someone")]
    assert combined == ["someone/wan22-anime-lora"]

    newest = list(api.list_models(sort="last_modified", limit=2, full=True))
    assert [m.id for m in newest] == ["other/WAN2.2-pixel-lora", "someone/wan22-anime-lora"]
    assert newest[0].author == "other"
    assert newest[0].last_modified.isoformat().startswith("2025-09-01T12:00")
    assert [s.rfilename for s in newest[0].siblings] == [".gitattributes", "README.md", "weights.safetensors"]
    assert newest[0].sha == fake_hub.repo("other/WAN2.2-pixel-lora").sha

    expanded = list(api.list_models(search="flux", expand=["likes", "author"]))
    assert (expanded[0].likes, expanded[0].author, expanded[0].downloads) == (3, "someone", None)

    # huggingface_hub 2.4 sends no `direction` (the Hub sorts descending); the fake also takes direction=1
    assert all("direction" not in r.query for r in fake_hub.requests_for("/api/models"))


def test_list_models_direction_and_pagination(fake_hub, catalogue):
    response = httpx2.get(
        f"{fake_hub.url}/api/models", params={"sort": "likes", "direction": "1", "limit": 2}
    )
    assert [m["id"] for m in response.json()] == ["other/WAN2.2-pixel-lora", "someone/flux-lora"]
    assert 'rel="next"' in response.headers["link"]

    fake_hub.page_size = 2
    all_models = [m.id for m in HfApi().list_models()]
    assert all_models == catalogue  # creation order without sort, followed over three pages
    assert len(fake_hub.requests_for("/api/models")) == 1 + 3


# ---- repo info and tree -------------------------------------------------------------------------------------


def test_model_info_with_files_metadata(fake_hub, repo, weights):
    info = HfApi().model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.author == "acme" and info.sha == repo.sha
    assert (info.downloads, info.likes, info.private, info.gated) == (42, 7, False, False)
    assert info.pipeline_tag == "image-to-video"
    assert info.card_data.license == "apache-2.0"
    assert {"lora", "wan", "safetensors", "license:apache-2.0", "region:us"} <= set(info.tags)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    }
    model = siblings["model.safetensors"]
    assert model.size == len(weights)
    assert model.lfs.sha256 == hashlib.sha256(weights).hexdigest() and model.lfs.size == len(weights)
    config = siblings["config.json"]
    assert config.lfs is None and config.size == len(repo.files["config.json"].blob.content())
    assert config.blob_id == repo.files["config.json"].oid  # the git blob id
    assert siblings[".gitattributes"].size == len(DEFAULT_GITATTRIBUTES)
    assert fake_hub.requests_for("/api/models/*")[-1].query == {"blobs": ["true"]}

    bare = HfApi().model_info(REPO)
    assert all(s.size is None for s in bare.siblings)


def test_model_info_revisions(fake_hub, repo):
    first_sha = repo.sha
    fake_hub.add_repo(REPO, {"config.json": b"{}"}, commit_message="v2")
    api = HfApi()
    assert api.model_info(REPO).sha != first_sha
    old = api.model_info(REPO, revision=first_sha)
    assert old.sha == first_sha and "model.safetensors" in {s.rfilename for s in old.siblings}
    assert api.model_info(REPO, revision=first_sha[:10]).sha == first_sha
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="does-not-exist")


def test_list_repo_tree_recursive_paginated_and_expanded(fake_hub, repo):
    fake_hub.tree_page_size = 2
    api = HfApi()
    entries = list(api.list_repo_tree(REPO, recursive=True))
    assert [e.path for e in entries] == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer",
        "tokenizer/tokenizer.json",
    ]
    assert len(fake_hub.requests_for("/api/models/*/tree/*")) == 3
    model = next(e for e in entries if e.path == "model.safetensors")
    assert model.lfs.sha256 == repo.files["model.safetensors"].sha256
    assert model.blob_id == repo.files["model.safetensors"].oid

    top = [e.path for e in api.list_repo_tree(REPO)]
    assert "tokenizer/tokenizer.json" not in top and "tokenizer" in top
    inside = list(api.list_repo_tree(REPO, path_in_repo="tokenizer", expand=True))
    assert [e.path for e in inside] == ["tokenizer/tokenizer.json"]
    assert inside[0].last_commit.oid == repo.sha and inside[0].security.safe
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="nope"))

    assert api.list_repo_files(REPO) == [e.path for e in entries if e.path != "tokenizer"]
    paths = api.get_paths_info(REPO, ["config.json", "tokenizer", "missing"])
    assert [p.path for p in paths] == ["config.json", "tokenizer"]
    assert api.list_repo_refs(REPO).branches[0].target_commit == repo.sha


# ---- downloads ------------------------------------------------------------------------------------------------


def test_hf_hub_download_lfs_through_cdn_and_cache(fake_hub, repo, weights):
    path = Path(hf_hub_download(REPO, "model.safetensors"))
    assert path.read_bytes() == weights
    assert path.resolve().name == hashlib.sha256(weights).hexdigest()  # blob named by the LFS sha256
    head = fake_hub.requests_for("*/resolve/main/model.safetensors", method="HEAD")
    assert [r.status for r in head] == [302]
    cdn = fake_hub.requests_for("model.safetensors", host="cdn")
    assert [(r.method, r.status) for r in cdn] == [("GET", 200)]

    text = Path(hf_hub_download(REPO, "tokenizer/tokenizer.json"))
    assert text.read_bytes() == repo.files["tokenizer/tokenizer.json"].blob.content()
    assert text.resolve().name == repo.files["tokenizer/tokenizer.json"].oid  # git blob id for non-LFS files
    get = fake_hub.requests_for("tokenizer/tokenizer.json", method="GET")
    assert get[0].host == "hub" and get[0].bytes_sent < text.stat().st_size  # served gzip-encoded

    fake_hub.clear_requests()
    assert Path(hf_hub_download(REPO, "model.safetensors")) == path
    assert [r.method for r in fake_hub.requests] == ["HEAD"]  # only the metadata check, no second GET


def test_token_goes_to_the_hub_but_not_to_the_cdn(fake_hub, repo):
    fake_hub.env.switch(token="hf_fake_token")
    hf_hub_download(REPO, "model.safetensors")
    head = fake_hub.requests_for("*/resolve/*", method="HEAD")[0]
    assert head.token == "hf_fake_token"
    cdn = fake_hub.requests_for("*", host="cdn")[0]
    assert cdn.token is None


def test_dropped_connection_resumes_with_a_range_request(fake_hub, repo, weights, monkeypatch):
    from huggingface_hub import constants

    # The client keeps what it received in whole chunks of DOWNLOAD_CHUNK_SIZE (10 MB); shrink them so a
    # small file resumes the way a multi-GB one does.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    fake_hub.drop("model.safetensors", host="cdn", after_bytes=10_000)
    path = Path(hf_hub_download(REPO, "model.safetensors"))
    assert path.read_bytes() == weights
    cdn = fake_hub.requests_for("model.safetensors", host="cdn")
    assert [(r.status, r.range, r.dropped) for r in cdn] == [(200, None, True), (206, "bytes=10000-", False)]
    assert cdn[0].bytes_sent == 10_000 and cdn[1].bytes_sent == len(weights) - 10_000


def test_a_single_429_is_waited_out(fake_hub, repo, weights):
    fake_hub.fail("model.safetensors", 429, host="cdn", times=1, retry_after=0)
    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == weights
    assert [r.status for r in fake_hub.requests_for("model.safetensors", host="cdn")] == [429, 200]


def test_snapshot_download_and_no_refetch(fake_hub, repo):
    folder = Path(snapshot_download(REPO))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        repo.files
    )
    assert folder.parent.parent == fake_hub.env.cache_dir / "models--acme--tiny-model"
    fake_hub.clear_requests()
    assert Path(snapshot_download(REPO)) == folder
    assert [r.path for r in fake_hub.requests] == [f"/api/models/{REPO}/revision/main"]


def test_get_safetensors_metadata_reads_only_the_header(fake_hub, repo):
    weights = _safetensors(rows=1024)  # 256 KiB: more than the client's first range read
    fake_hub.add_repo(REPO, {"model.safetensors": weights})
    meta = HfApi().get_safetensors_metadata(REPO)
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert tensors["blocks.0.weight"].shape == [1024, 64] and tensors["blocks.0.weight"].dtype == "F32"
    assert meta.parameter_count == {"F32": 1024 * 64, "F16": 64}
    reads = fake_hub.requests_for("model.safetensors", method="GET", host="cdn")
    assert [r.status for r in reads] == [206] and reads[0].range == "bytes=0-100000"
    assert reads[0].bytes_sent == 100_001 < len(weights)


# ---- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, None, RepositoryNotFoundError),  # default code RepoNotFound
        (401, "GatedRepo", GatedRepoError),
        (403, "", HfHubHTTPError),
        (404, None, RepositoryNotFoundError),
        (404, "RevisionNotFound", RevisionNotFoundError),
        (404, "EntryNotFound", RemoteEntryNotFoundError),
        (429, None, HfHubHTTPError),
        (500, None, HfHubHTTPError),
        (503, None, HfHubHTTPError),
    ],
)
def test_error_codes_map_to_client_exceptions(fake_hub, repo, status, code, expected):
    kwargs = {} if code is None else {"error_code": code or None}
    fake_hub.fail(f"/api/models/{REPO}", status, times=1, **kwargs)
    with pytest.raises(HfHubHTTPError) as caught:
        HfApi().model_info(REPO)
    assert type(caught.value) is expected
    assert caught.value.response.status_code == status
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "0"
    assert HfApi().model_info(REPO).id == REPO  # times=1: the next call goes through


def test_unknown_and_private_repos_are_not_found(fake_hub, repo):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError) as caught:
        api.model_info("acme/missing")
    assert caught.value.response.status_code == 401  # anonymous: 401 RepoNotFound, as on the Hub
    fake_hub.env.switch(token="hf_someone")
    with pytest.raises(RepositoryNotFoundError) as caught:
        api.model_info("acme/missing")
    assert caught.value.response.status_code == 404

    fake_hub.add_repo("acme/secret", {"a.txt": b"x"}, private=True, tokens={"hf_owner"})
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/secret")
    assert "acme/secret" not in [m.id for m in api.list_models(author="acme")]
    fake_hub.env.switch(token="hf_owner")
    assert api.model_info("acme/secret").private is True
    assert "acme/secret" in [m.id for m in api.list_models(author="acme")]


def test_gated_repo_downloads(fake_hub, repo):
    fake_hub.add_repo("acme/gated", {"model.safetensors": b"\0" * 32}, gated="manual", tokens={"hf_granted"})
    api = HfApi()
    assert api.model_info("acme/gated", files_metadata=True).gated == "manual"  # metadata stays public
    with pytest.raises(GatedRepoError) as caught:
        hf_hub_download("acme/gated", "model.safetensors")
    assert caught.value.response.status_code == 401
    assert caught.value.response.headers["x-error-code"] == "GatedRepo"
    fake_hub.env.switch(token="hf_not_granted")
    with pytest.raises(GatedRepoError) as caught:
        hf_hub_download("acme/gated", "model.safetensors")
    assert caught.value.response.status_code == 403
    fake_hub.env.switch(token="hf_granted")
    assert Path(hf_hub_download("acme/gated", "model.safetensors")).read_bytes() == b"\0" * 32


def test_missing_file_is_entry_not_found(fake_hub, repo):
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.bin")
    head = fake_hub.requests_for("*/nope.bin")[0]
    assert head.status == 404
    # the client caches the non-existence under the commit the Hub reported
    assert (
        fake_hub.env.cache_dir / "models--acme--tiny-model" / ".no_exist" / repo.sha / "nope.bin"
    ).exists()


def test_a_403_on_file_metadata_becomes_local_entry_not_found(fake_hub, repo):
    # hf_hub_download only re-raises 401/RepoNotFound/GatedRepo from the HEAD; anything else reads as "offline"
    fake_hub.fail("*/resolve/*/config.json", 403)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")


def test_delay_and_client_timeout(fake_hub, repo):
    fake_hub.delay(f"/api/models/{REPO}", 0.3, times=1)
    start = time.monotonic()
    HfApi().model_info(REPO)
    assert time.monotonic() - start >= 0.3
    fake_hub.delay(f"/api/models/{REPO}", 2.0, times=1)
    with pytest.raises(httpx2.TimeoutException):
        HfApi().model_info(REPO, timeout=0.2)


def test_offline_mode_and_closed_port(fake_hub, repo):
    fake_hub.env.switch(offline=True)
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info(REPO)
    assert fake_hub.requests == []
    fake_hub.env.switch(offline=False, endpoint=unused_loopback_url())
    with pytest.raises(httpx2.ConnectError):
        HfApi().model_info(REPO)
    assert fake_hub.requests == []


def test_env_is_restored(tmp_path):
    from huggingface_hub import constants

    from .env import HubEnv

    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, constants.HF_HOME)
    with FakeHub() as hub, HubEnv(hub.url, tmp_path) as env:
        assert hub.url == constants.ENDPOINT and constants.HF_HUB_OFFLINE is False
        assert str(env.cache_dir) == constants.HF_HUB_CACHE
        env.switch(offline=True)
    assert before == (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, constants.HF_HOME)


def test_fake_raised_nothing_internally(fake_hub, repo):
    HfApi().model_info(REPO, files_metadata=True)
    snapshot_download(REPO)
    assert fake_hub.server_errors == []
