"""LoRAs from the Hub (``studio.hub``) against the loopback fake Hub, with the real ``huggingface_hub``.

Repos hold LoRA files made with :mod:`studio.loras.synthetic`: a high/low pair and a single file in the demo
model's shapes (compatible with it), a file in Wan 14B shapes (not), a file whose header is broken, a pickle.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from fakehub import FakeHub, unused_loopback_url

from studio.errors import LoraFileError, StudioError, ValidationError
from studio.hub import card as hub_card
from studio.hub.client import HubClient
from studio.hub.common import REGISTRY_FILE_NAME, DownloadCancelled, HubError, HubLibraryItem, RepoSummary
from studio.loras.compat import WAN22_I2V_A14B_TRANSFORMER_CONFIG
from studio.loras.safetensors_io import read_header
from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors, training_metadata, write_lora
from studio.models.demo import TRANSFORMER_CONFIG
from studio.stack.schema import LoraSource, Stack, StackEntry

REPO = "alice/wan22-dance-lora"
HIGH, LOW = "dance_high_noise.safetensors", "dance_low_noise.safetensors"
README = """---
base_model: Wan-AI/Wan2.2-I2V-A14B
tags: [lora, image-to-video]
instance_prompt: sks dance
widget:
  - text: a woman doing sks dance on a beach
---
# Dance

![preview](preview.gif) [![badge](b.svg)](http://x)

A dancing LoRA for **Wan2.2** that makes people dance in [the studio style](http://example).

Trigger word: `sks dance`
"""
OFFLINE = "The Hugging Face Hub is switched off (HF_HUB_OFFLINE is set); unset it to {} from the Hub."
SERVER_500 = (
    "The Hugging Face Hub had a server error (HTTP 500); it may be having trouble, try again in a few minutes. "
    "The rest of the studio keeps working."
)
RATE_LIMITED = "The Hugging Face Hub is rate-limiting requests (HTTP 429); wait a minute and try again."
UNREACHABLE = (
    "The Hugging Face Hub cannot be reached ({}); check the network connection and try again. "
    "The rest of the studio keeps working."
)


def _gated(repo: str) -> str:
    return (
        f"{repo} needs you to accept its licence on huggingface.co and an access token "
        "(set HF_TOKEN or type one in); then try again."
    )


def _not_found(repo: str) -> str:
    return f"{repo} was not found on the Hugging Face Hub; check the name or your access token."


pytestmark = pytest.mark.usefixtures("loopback_only")  # not even a DNS query leaves the machine


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def lora_files(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    demo = TRANSFORMER_CONFIG
    files = {
        HIGH: write_lora(
            src / HIGH, make_lora_tensors(demo, layout="original", naming="lora_down", alpha=2.0, seed=1)
        ),
        LOW: write_lora(
            src / LOW, make_lora_tensors(demo, layout="original", naming="lora_down", alpha=2.0, seed=2)
        ),
        "style.safetensors": write_lora(
            src / "style.safetensors",
            make_lora_tensors(demo, rank=8, seed=3),
            training_metadata(trigger_phrase="sks style, glow", rank=8),
        ),
        "wan14b.safetensors": write_lora(
            src / "wan14b.safetensors",
            make_lora_tensors(WAN_14B_CONFIG, blocks=[0], modules=["attn1.to_q", "attn2.to_k"], rank=2),
        ),
        "v2/run_H.safetensors": write_lora(src / "v2" / "run_H.safetensors", make_lora_tensors(demo, seed=4)),
        "v2/run_L.safetensors": write_lora(src / "v2" / "run_L.safetensors", make_lora_tensors(demo, seed=5)),
    }
    # A header whose tensor lies outside the file (as a truncated upload would have it).
    broken = src / "broken.safetensors"
    header = json.dumps(
        {"x.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}
    ).encode()
    broken.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    files["broken.safetensors"] = broken
    return files


@pytest.fixture
def repo(fake_hub: FakeHub, lora_files):
    return fake_hub.add_repo(
        REPO,
        {**lora_files, "README.md": README, "old.pt": b"\x80\x02pickle"},
        downloads=120,
        likes=7,
        tags=["lora", "base_model:adapter:Wan-AI/Wan2.2-I2V-A14B", "image-to-video", "region:us"],
    )


@pytest.fixture
def client(tmp_path) -> HubClient:
    return HubClient(cache_dir=tmp_path / "studio-cache", timeout_s=5)


def _lora_repo(hub: FakeHub, repo_id: str, tags: list[str], *, downloads=0, likes=0, card=None, **kw):
    data = make_lora_tensors(TRANSFORMER_CONFIG, seed=len(repo_id))
    from safetensors.torch import save

    files = {"lora.safetensors": save({k: v.contiguous() for k, v in data.items()})}
    return hub.add_repo(repo_id, files, tags=tags, downloads=downloads, likes=likes, card=card, **kw)


@pytest.fixture
def catalogue(fake_hub: FakeHub, repo):
    """Several repos for the search: Wan2.2 I2V, Wan2.1 T2V, no version, not Wan, a base model, not a LoRA."""
    _lora_repo(
        fake_hub,
        "bob/wan21-t2v-pixel",
        ["lora", "base_model:adapter:Wan-AI/Wan2.1-T2V-14B", "text-to-video"],
        downloads=500,
        likes=2,
        card="---\ntags: [lora]\n---\nPixel art for Wan 2.1.\n\nYou should use `pixelart` to trigger the style.\n",
    )
    _lora_repo(fake_hub, "carol/wan-anime-lora", ["lora"], downloads=50, likes=30)
    _lora_repo(
        fake_hub, "dave/flux-wan-lookalike", ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"]
    )
    fake_hub.add_repo(
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        {"model_index.json": b'{"_class_name": "WanImageToVideoPipeline"}'},
        downloads=9999,
        tags=["diffusers", "image-to-video"],
    )
    _lora_repo(fake_hub, "erin/swan-lake-lora", ["lora"], downloads=10)
    return fake_hub


def _files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


# ---- card text --------------------------------------------------------------------------------------------------


def test_card_helpers():
    assert (
        hub_card.readme_summary(README)
        == "A dancing LoRA for Wan2.2 that makes people dance in the studio style."
    )
    assert hub_card.readme_triggers(README) == ["sks dance"]
    assert hub_card.readme_triggers("**Trigger words**: neon, glow\n") == ["neon", "glow"]
    assert hub_card.readme_triggers("You should use `pix` to trigger the image generation.") == ["pix"]
    assert hub_card.readme_summary("---\na: 1\n---\n# T\n\n```\ncode here and more\n```\n\nok") is None
    assert hub_card.wan_versions(["Wan-AI/Wan2.2-I2V-A14B", "wan2_1 thing", "Wan22"]) == ["2.1", "2.2"]
    assert hub_card.wan_versions(["alice/swan22"]) == []
    assert hub_card.tasks_of(["Wan-AI/Wan2.2-TI2V-5B"]) == ["i2v", "t2v"]
    assert hub_card.tasks_of(["text-to-video", "x/Wan2.1-T2V-14B"]) == ["t2v"]
    assert hub_card.mentions_wan(["kijai/WanVideo_comfy"]) and not hub_card.mentions_wan(
        ["erin/swan-lake-lora"]
    )
    assert hub_card.base_models(
        ["base_model:adapter:A/B", "base_model:C/D"], {"base_model": ["A/B", "E/F"]}
    ) == [
        "A/B",
        "C/D",
        "E/F",
    ]
    assert hub_card.card_triggers({"instance_prompt": "a, b"}) == ["a", "b"]


# ---- search -----------------------------------------------------------------------------------------------------


def test_search_lists_wan_loras_with_card_summary_and_trigger_words(client, catalogue):
    results = client.search()
    assert [r.repo_id for r in results] == ["bob/wan21-t2v-pixel", REPO, "carol/wan-anime-lora"]
    dance = results[1]
    assert isinstance(dance, RepoSummary)
    assert (dance.author, dance.downloads, dance.likes) == ("alice", 120, 7)
    assert dance.last_modified and dance.last_modified.endswith("Z")
    assert dance.base_models == ["Wan-AI/Wan2.2-I2V-A14B"]
    assert (dance.wan_versions, dance.tasks, dance.is_lora) == (["2.2"], ["i2v"], True)
    assert dance.summary == "A dancing LoRA for Wan2.2 that makes people dance in the studio style."
    assert dance.trigger_words == ["sks dance"]  # from instance_prompt
    assert dance.example_prompts == ["a woman doing sks dance on a beach"]
    pixel = results[0]
    assert (pixel.wan_versions, pixel.tasks) == (["2.1"], ["t2v"])
    assert pixel.summary == "Pixel art for Wan 2.1." and pixel.trigger_words == [
        "pixelart"
    ]  # from the README
    assert results[2].wan_versions == [] and results[2].summary is None
    json.dumps([r.model_dump(mode="json") for r in results])
    assert fake_hub_search_params(catalogue)["expand"]


def fake_hub_search_params(hub: FakeHub) -> dict:
    (request,) = hub.requests_for("/api/models", method="GET")
    return request.query


def test_search_filters_sort_and_limit(client, catalogue):
    assert [r.repo_id for r in client.search(wan_version="2.2")] == [REPO, "carol/wan-anime-lora"]
    assert [r.repo_id for r in client.search(wan_version="2.1", task="t2v")] == [
        "bob/wan21-t2v-pixel",
        "carol/wan-anime-lora",
    ]
    assert [r.repo_id for r in client.search(task="i2v")] == [REPO, "carol/wan-anime-lora"]
    assert [r.repo_id for r in client.search(sort="likes", limit=2)] == ["carol/wan-anime-lora", REPO]
    assert [r.repo_id for r in client.search("pixel")] == ["bob/wan21-t2v-pixel"]
    assert "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in [r.repo_id for r in client.search(lora_only=False)]
    stamps = [r.last_modified for r in client.search(sort="updated")]
    assert stamps == sorted(stamps, reverse=True)
    sent = {r.query["sort"][0] for r in catalogue.requests_for("/api/models")}
    assert sent == {"downloads", "likes", "lastModified"}
    with pytest.raises(ValidationError):
        client.search(sort="stars")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        client.search(limit=0)


def test_search_results_are_cached_and_readmes_read_only_for_shown_results(client, catalogue, tmp_path):
    catalogue.clear_requests()
    first = client.search(limit=1)
    assert [r.repo_id for r in first] == ["bob/wan21-t2v-pixel"]
    readmes = catalogue.requests_for("*/README.md", method="GET")
    assert [r.repo_id for r in readmes] == ["bob/wan21-t2v-pixel"]
    assert readmes[0].range == "bytes=0-32767"
    assert client.search(limit=1) == first
    assert len(catalogue.requests) == 2  # one search, one README: the repeat came from the cache
    client.search(limit=2)
    assert len(catalogue.requests_for("/api/models")) == 2
    fresh = HubClient(cache_dir=tmp_path / "c2", cache_ttl_s=0)
    fresh.search(limit=1, readme=False)
    fresh.search(limit=1, readme=False)
    assert len(catalogue.requests_for("/api/models")) == 4


def test_a_private_repo_is_searched_only_with_its_token(client, fake_hub, catalogue):
    _lora_repo(fake_hub, "zed/wan22-secret-lora", ["lora"], private=True, tokens=["hf_zed"])
    assert "zed/wan22-secret-lora" not in [r.repo_id for r in client.search()]
    assert "zed/wan22-secret-lora" in [r.repo_id for r in client.search(token="hf_zed")]


# ---- files: remote inspection -----------------------------------------------------------------------------------


def test_files_inspects_headers_remotely_pairs_halves_and_checks_compat(client, fake_hub, repo, lora_files):
    fake_hub.clear_requests()
    listing = client.files(REPO, model_config=TRANSFORMER_CONFIG, model_name="the demo model")
    assert (listing.repo, listing.revision, listing.sha) == (REPO, "main", repo.sha)
    assert listing.refused == ["old.pt"] and any("old.pt" in n for n in listing.notes)
    by_name = {f.file: f for f in listing.files}
    assert set(by_name) == {n for n in lora_files}
    for name, path in lora_files.items():
        assert by_name[name].size == path.stat().st_size
        assert by_name[name].sha256 == repo.files[name].sha256
        assert not by_name[name].downloaded

    high, low = by_name[HIGH].info, by_name[LOW].info
    assert (high.layout, high.rank, high.alpha, high.model_dim) == ("original", 4, 2.0, 24)
    assert (high.expert_hint, high.pair_file, low.expert_hint) == ("high", LOW, "low")
    assert high.path == f"hf://{REPO}@{repo.sha}/{HIGH}"
    style = by_name["style.safetensors"].info
    assert (style.layout, style.rank, style.trigger_words) == ("diffusers", 8, ["sks style", "glow"])
    big = by_name["wan14b.safetensors"]
    assert (big.info.model_dim, big.info.base_model, big.compat.level) == (5120, "Wan 14B", "incompatible")
    assert (
        by_name[HIGH].compat.level == "compatible"
        and by_name["style.safetensors"].compat.level == "compatible"
    )

    # the broken header gets the very sentence the local reader gives
    with pytest.raises(LoraFileError) as local:
        read_header(lora_files["broken.safetensors"])
    assert by_name["broken.safetensors"].error == str(local.value)
    assert by_name["broken.safetensors"].info is None

    items = {it.label: it for it in listing.items}
    assert (items["dance"].kind, items["dance"].high_file, items["dance"].low_file) == ("pair", HIGH, LOW)
    assert (items["run"].kind, items["run"].high_file, items["run"].low_file) == (
        "pair",
        "v2/run_H.safetensors",
        "v2/run_L.safetensors",
    )
    assert items["dance"].compat.level == "compatible" and items["wan14b"].compat.level == "incompatible"
    assert items["broken"].error and items["dance"].size == by_name[HIGH].size + by_name[LOW].size
    entry = items["dance"].to_stack_entry(1.0, 0.5)
    assert entry.high == LoraSource(repo=REPO, file=HIGH, revision=repo.sha, sha256=repo.files[HIGH].sha256)
    assert (entry.low.file, entry.weight_low) == (LOW, 0.5)
    json.loads(listing.model_dump_json())

    # nothing was downloaded: only header ranges (at most 100 kB each), nothing in the HF cache
    file_gets = [r for r in fake_hub.requests if r.file and r.method == "GET"]
    assert file_gets and all(r.range and r.range.startswith("bytes=0-") for r in file_gets)
    assert all(r.bytes_sent <= 100_000 for r in file_gets)
    assert not fake_hub.env.cache_dir.exists() or not list(fake_hub.env.cache_dir.rglob("*.safetensors"))

    # with the A14B config the 14B file fits and the demo-shaped ones do not
    a14b = client.files(REPO, model_config=WAN22_I2V_A14B_TRANSFORMER_CONFIG)
    assert a14b.file("wan14b.safetensors").compat.level == "compatible"
    assert a14b.file(HIGH).compat.level == "incompatible"


def test_headers_are_cached_per_commit(client, fake_hub, repo):
    client.files(REPO)
    fake_hub.clear_requests()
    client.files(REPO)
    assert [r.path for r in fake_hub.requests] == [f"/api/models/{REPO}"]


def test_a_header_longer_than_the_first_range_takes_a_second_request(client, fake_hub, tmp_path):
    path = write_lora(
        tmp_path / "long.safetensors",
        make_lora_tensors(TRANSFORMER_CONFIG, seed=9),
        {"modelspec.description": "d" * 150_000, "modelspec.trigger_phrase": "longword"},
    )
    fake_hub.add_repo("alice/long", {"long.safetensors": path})
    info = client.files("alice/long").file("long.safetensors").info
    assert info is not None and info.trigger_words == ["longword"] and info.layout == "diffusers"
    ranges = [r.range for r in fake_hub.requests_for("long.safetensors", host="cdn")]
    assert ranges[0] == "bytes=0-99999" and ranges[1].startswith("bytes=100000-")


def test_a_pickle_renamed_to_safetensors_is_refused_remotely(client, fake_hub):
    fake_hub.add_repo("alice/sneaky", {"lora.safetensors": b"\x80\x02" + b"\0" * 200})
    error = client.files("alice/sneaky").file("lora.safetensors").error
    assert error and "pickle" in error


def test_files_at_an_older_revision_and_an_unknown_one(client, fake_hub, repo, lora_files):
    old = repo.sha
    fake_hub.add_repo(REPO, {"new.safetensors": lora_files["style.safetensors"]})
    assert [f.file for f in client.files(REPO).files] == ["new.safetensors"]
    listing = client.files(REPO, revision=old)
    assert listing.sha == old and HIGH in {f.file for f in listing.files}
    with pytest.raises(HubError) as caught:
        client.files(REPO, revision="nope")
    assert (
        str(caught.value)
        == f"That revision of {REPO} does not exist on the Hugging Face Hub; check the revision."
    )
    with pytest.raises(ValidationError):
        client.files("not a repo id")


def test_a_slow_file_times_out_alone(fake_hub, repo, tmp_path):
    fake_hub.delay("style.safetensors", 3, host="cdn")
    client = HubClient(cache_dir=tmp_path / "c", timeout_s=0.5)
    start = time.monotonic()
    listing = client.files(REPO)
    assert time.monotonic() - start < 2.5
    assert listing.file("style.safetensors").error == UNREACHABLE.format("it did not answer in time")
    assert listing.file(HIGH).info is not None


# ---- download ---------------------------------------------------------------------------------------------------


def test_download_pair_with_progress_then_it_is_in_the_library(client, fake_hub, repo, lora_files):
    events: list[tuple[int, int]] = []
    paths = client.download(REPO, [HIGH, LOW], progress=lambda done, total: events.append((done, total)))
    snapshot = fake_hub.env.cache_dir / "models--alice--wan22-dance-lora" / "snapshots" / repo.sha
    assert paths == [snapshot / HIGH, snapshot / LOW]
    assert [p.read_bytes() for p in paths] == [lora_files[HIGH].read_bytes(), lora_files[LOW].read_bytes()]
    total = lora_files[HIGH].stat().st_size + lora_files[LOW].stat().st_size
    assert events[0] == (0, total) and events[-1] == (total, total) and len(events) >= 3
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(events))

    got = dict((s.file, (s, p)) for s, p in client.downloaded())
    assert set(got) == {HIGH, LOW}
    source, path = got[HIGH]
    assert (source.repo, source.revision, source.sha256, path) == (
        REPO,
        repo.sha,
        repo.files[HIGH].sha256,
        paths[0],
    )
    assert client.resolve(source) == paths[0]
    assert client.resolve(LoraSource(repo=REPO, file=HIGH)) == paths[0]  # "main" resolves locally too

    (item,) = client.library_items()
    assert isinstance(item, HubLibraryItem)
    assert (item.kind, item.label, item.repo, item.revision) == ("pair", "dance", REPO, repo.sha)
    assert (item.high_rel_path, item.low_rel_path, item.high_path) == (HIGH, LOW, str(paths[0]))
    assert item.high_info.sha256 == repo.files[HIGH].sha256 and item.high_info.rank == 4
    entry = item.to_stack_entry(1.0, 0.5)
    assert entry.high == LoraSource(repo=REPO, file=HIGH, revision=repo.sha, sha256=repo.files[HIGH].sha256)
    assert entry.low == LoraSource(repo=REPO, file=LOW, revision=repo.sha, sha256=repo.files[LOW].sha256)
    assert (entry.weight_high, entry.weight_low) == (1.0, 0.5)
    assert client.files(REPO).file(HIGH).downloaded

    registry = json.loads((client.cache_dir / REGISTRY_FILE_NAME).read_text())
    assert {(e["repo"], e["file"], e["revision"]) for e in registry["files"]} == {
        (REPO, HIGH, repo.sha),
        (REPO, LOW, repo.sha),
    }


def test_already_downloaded_files_are_not_fetched_again(client, fake_hub, repo):
    first = client.download(REPO, [HIGH])
    fake_hub.clear_requests()
    assert client.download(REPO, HIGH) == first
    assert [r.path for r in fake_hub.requests] == [f"/api/models/{REPO}/revision/main"]
    fake_hub.clear_requests()
    assert client.download(REPO, [HIGH], revision=repo.sha) == first
    assert fake_hub.requests == []  # a commit sha whose files are here needs no request at all
    fake_hub.env.switch(offline=True)
    assert client.download(REPO, [HIGH], revision=repo.sha) == first
    assert [i.label for i in client.library_items()] == ["dance_high_noise"]


def test_download_is_pinned_to_the_commit(client, fake_hub, repo, lora_files):
    old_sha = repo.sha
    (old,) = client.download(REPO, [HIGH])
    changed = {**{n: p for n, p in lora_files.items()}, HIGH: lora_files["style.safetensors"]}
    fake_hub.add_repo(REPO, changed)
    assert client.resolve(LoraSource(repo=REPO, file=HIGH, revision=old_sha)).read_bytes() == old.read_bytes()
    (new,) = client.download(REPO, [HIGH])
    assert new != old and new.read_bytes() == lora_files["style.safetensors"].read_bytes()
    assert {s.revision for s, _ in client.downloaded()} == {old_sha, fake_hub.repo(REPO).sha}


def test_dropped_connection_resumes(client, fake_hub, repo, lora_files, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    fake_hub.drop(HIGH, host="cdn", after_bytes=10_000)
    folder = fake_hub.env.cache_dir / "models--alice--wan22-dance-lora"
    during: list[tuple[bool, list[str]]] = []

    def progress(done: int, total: int) -> None:
        if 0 < done < total:  # mid-download: a process-unique .incomplete blob, nothing in the snapshot yet
            during.append((_files_in(folder / "snapshots") != set(), sorted(_files_in(folder / "blobs"))))

    (path,) = client.download(REPO, [HIGH], progress=progress)
    assert path.read_bytes() == lora_files[HIGH].read_bytes()
    assert during and all(not linked and len(blobs) == 1 for linked, blobs in during)
    assert all(blobs[0].startswith(repo.files[HIGH].sha256 + ".") for _, blobs in during)
    assert all(blobs[0].endswith(".incomplete") for _, blobs in during)
    assert _files_in(folder / "blobs") == {repo.files[HIGH].sha256}
    gets = fake_hub.requests_for(HIGH, host="cdn", method="GET")
    assert [(r.status, r.dropped) for r in gets] == [(200, True), (206, False)]
    assert gets[1].range == "bytes=8192-"


def _no_partial_files(hub: FakeHub, client: HubClient) -> None:
    folder = hub.env.cache_dir / "models--alice--wan22-dance-lora"
    left = _files_in(folder) if folder.exists() else set()
    assert not [f for f in left if f.startswith(("blobs/", "snapshots/"))], left
    assert client.downloaded() == [] and client.library_items() == []


def test_a_download_that_fails_midway_leaves_no_half_file(client, fake_hub, repo, lora_files, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    fake_hub.drop(HIGH, host="cdn", after_bytes=10_000)
    armed = []

    def progress(done: int, total: int) -> None:
        if done and not armed:  # the body has started: make the resumed request fail
            armed.append(fake_hub.fail(HIGH, 500, host="cdn"))

    with pytest.raises(HubError) as caught:
        client.download(REPO, [HIGH], progress=progress)
    assert str(caught.value) == SERVER_500
    assert [r.status for r in fake_hub.requests_for(HIGH, host="cdn", method="GET")] == [200, 500]
    _no_partial_files(fake_hub, client)

    fake_hub.clear_faults()
    (path,) = client.download(REPO, [HIGH])
    assert path.read_bytes() == lora_files[HIGH].read_bytes()


def test_a_cancelled_download_leaves_no_half_file(client, fake_hub, repo, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    cancel = threading.Event()
    with pytest.raises(DownloadCancelled):
        client.download(REPO, [HIGH, LOW], progress=lambda done, total: done and cancel.set(), cancel=cancel)
    _no_partial_files(fake_hub, client)


def test_a_file_that_arrives_damaged_is_removed(client, fake_hub, repo, monkeypatch):
    from studio.hub import downloads

    monkeypatch.setattr(downloads, "file_sha256", lambda path, cache_dir=None: "f" * 64)
    with pytest.raises(HubError, match="arrived damaged"):
        client.download(REPO, [HIGH])
    _no_partial_files(fake_hub, client)


def test_download_refuses_pickles_and_unknown_files(client, fake_hub, repo):
    with pytest.raises(LoraFileError, match="pickle"):
        client.download(REPO, ["old.pt"])
    with pytest.raises(ValidationError):
        client.download(REPO, ["../escape.safetensors"])
    with pytest.raises(HubError, match="is not in alice/wan22-dance-lora at revision main"):
        client.download(REPO, ["missing.safetensors"])
    assert not fake_hub.requests_for("*/resolve/*")


# ---- presets: missing files -------------------------------------------------------------------------------------


def test_missing_hub_files_of_a_stack_are_downloaded_exactly(client, fake_hub, repo, tmp_path):
    client.download(REPO, [HIGH])
    local = tmp_path / "local.safetensors"
    stack = Stack(
        entries=[
            StackEntry(
                name="dance", high=LoraSource(repo=REPO, file=HIGH), low=LoraSource(repo=REPO, file=LOW)
            ),
            StackEntry(name="style", high=LoraSource(repo=REPO, file="style.safetensors", revision=repo.sha)),
            StackEntry(name="off", high=LoraSource(repo=REPO, file="wan14b.safetensors"), enabled=False),
            StackEntry.single(local),
        ]
    )
    missing = client.missing(stack)
    assert [(s.file, s.revision) for s in missing] == [(LOW, None), ("style.safetensors", repo.sha)]
    with pytest.raises(LoraFileError, match="python -m studio hub download"):
        client.resolve(missing[0])
    fake_hub.clear_requests()
    paths = client.download_sources(missing)
    assert [p.name for p in paths] == [LOW, "style.safetensors"]
    fetched = {r.file for r in fake_hub.requests if r.host == "cdn" and r.method == "GET"}
    assert fetched == {LOW, "style.safetensors"}
    assert client.missing(stack) == []


def test_a_preset_file_that_changed_on_the_hub_is_refused(client, fake_hub, repo):
    stale = LoraSource(repo=REPO, file=HIGH, revision="main", sha256="0" * 64)
    with pytest.raises(HubError, match="is not the file that was saved"):
        client.download_sources([stale])
    good = LoraSource(repo=REPO, file=HIGH, revision="main", sha256=repo.files[HIGH].sha256)
    assert client.download_sources([good])[0].name == HIGH
    pinned = good.model_copy(update={"revision": repo.sha})
    fake_hub.clear_requests()
    assert client.download_sources([pinned])[0].name == HIGH
    assert fake_hub.requests == []  # pinned, here and the same sha256: no request


# ---- tokens -----------------------------------------------------------------------------------------------------


@pytest.fixture
def gated(fake_hub, lora_files):
    return fake_hub.add_repo(
        "acme/wan22-gated-lora",
        {HIGH: lora_files[HIGH], "README.md": README},
        gated="manual",
        tokens=["hf_acme_secret_token_123"],
        tags=["lora", "base_model:adapter:Wan-AI/Wan2.2-I2V-A14B"],
    )


def test_gated_repo_needs_a_token(client, fake_hub, gated, tmp_path):
    repo_id = gated.repo_id
    listing = client.files(repo_id)  # the file list is public, the headers are not
    assert listing.file(HIGH).error == _gated(repo_id) and listing.notes == [_gated(repo_id)]
    with pytest.raises(HubError) as caught:
        client.download(repo_id, [HIGH])
    assert str(caught.value) == _gated(repo_id)
    wrong = HubClient("hf_wrong", cache_dir=tmp_path / "c")
    with pytest.raises(HubError) as caught:
        wrong.download(repo_id, [HIGH])
    assert str(caught.value) == _gated(repo_id)

    typed = HubClient("hf_acme_secret_token_123", cache_dir=tmp_path / "c")
    assert typed.files(repo_id).file(HIGH).info is not None
    assert typed.download(repo_id, [HIGH])[0].is_file()
    # a token given per call works as well
    client.clear_cache()
    assert client.files(repo_id, token="hf_acme_secret_token_123").file(HIGH).info is not None


def test_hf_token_from_the_environment_is_used(fake_hub, gated, tmp_path):
    fake_hub.env.switch(token="hf_acme_secret_token_123")
    assert HubClient(cache_dir=tmp_path / "c").download(gated.repo_id, [HIGH])[0].is_file()


def test_private_repo(client, fake_hub, lora_files, tmp_path):
    fake_hub.add_repo(
        "acme/private-lora", {HIGH: lora_files[HIGH]}, private=True, tokens=["hf_private_tok_456"]
    )
    with pytest.raises(HubError) as caught:
        client.files("acme/private-lora")
    assert str(caught.value) == _not_found("acme/private-lora")
    typed = HubClient("hf_private_tok_456", cache_dir=tmp_path / "c")
    assert typed.files("acme/private-lora").file(HIGH).info is not None


def test_the_token_is_never_written_or_logged(fake_hub, gated, catalogue, tmp_path, caplog):
    token = "hf_acme_secret_token_123"
    caplog.set_level(logging.DEBUG)
    client = HubClient(token, cache_dir=tmp_path / "studio-cache")
    assert token not in repr(client)
    client.search("wan22")
    client.files(gated.repo_id)
    client.download(gated.repo_id, [HIGH])
    (item,) = client.library_items()
    entry = item.to_stack_entry()
    fake_hub.fail("/api/models/*", 401, times=1)
    with pytest.raises(HubError) as caught:
        client.files(gated.repo_id, revision="main")
    assert token not in str(caught.value)
    assert token not in entry.model_dump_json() and token not in item.model_dump_json()
    assert any(r.token == token for r in fake_hub.requests)  # it was sent …
    assert token not in caplog.text  # … but never logged
    for file in tmp_path.rglob("*"):  # … nor written: studio cache, HF cache, everything under tmp_path
        if file.is_file():
            assert token.encode() not in file.read_bytes(), file


# ---- failures: one sentence each, as HubError ------------------------------------------------------------------


def _offline(hub):
    hub.env.switch(offline=True)


def _refused(hub):
    hub.env.switch(endpoint=unused_loopback_url())


def _dns(hub):
    hub.env.switch(endpoint="http://nonexistent.invalid")


def _status(status, **kw):
    def inject(hub):
        hub.fail("/api/*", status, **kw)

    return inject


def _slow(hub):
    hub.delay("/api/*", 3)


BAD_TOKEN = "Invalid credentials in Authorization header"
TOKEN_REFUSED = "The Hugging Face Hub refused the access token; check HF_TOKEN or the token you typed in."
CASES = [
    pytest.param(_offline, "offline", id="offline"),
    pytest.param(_refused, UNREACHABLE.format("no connection"), id="connection-refused"),
    pytest.param(_dns, UNREACHABLE.format("no connection: its host name could not be looked up"), id="dns"),
    pytest.param(_slow, UNREACHABLE.format("it did not answer in time"), id="timeout"),
    pytest.param(_status(401, error_code=None), "401", id="401"),
    pytest.param(_status(401, error_code=None, message=BAD_TOKEN), "bad-token", id="401-bad-token"),
    pytest.param(_status(403), "403", id="403"),
    pytest.param(_status(404), "404", id="404"),
    pytest.param(_status(429, retry_after=30), RATE_LIMITED, id="429"),
    pytest.param(_status(500), SERVER_500, id="500"),
    pytest.param(_status(503), SERVER_500.replace("500", "503"), id="503"),
]


def _expected(kind: str, repo: str | None, action: str) -> str:
    """The sentence for a failure about ``repo`` (None: a search, which is about no repo)."""
    if kind == "offline":
        return OFFLINE.format(action)
    if repo is None:
        return {
            "401": TOKEN_REFUSED,
            "bad-token": TOKEN_REFUSED,
            "403": "Your access token may not do this (HTTP 403); check its permissions on huggingface.co.",
            "404": "The Hugging Face Hub did not find what was asked for (HTTP 404); check HF_ENDPOINT and try again.",
        }.get(kind, kind)
    return {
        "401": f"The Hugging Face Hub refused the access token for {repo}; check HF_TOKEN or the token you typed in.",
        "bad-token": f"The Hugging Face Hub refused the access token for {repo}; check HF_TOKEN or the token you typed in.",
        "403": f"Your access token may not read {repo} (HTTP 403); check its permissions on huggingface.co.",
        "404": _not_found(repo),
    }.get(kind, kind)


@pytest.mark.parametrize(("inject", "kind"), CASES)
def test_search_failures(fake_hub, catalogue, tmp_path, inject, kind):
    client = HubClient(cache_dir=tmp_path / "c", timeout_s=0.5)
    inject(fake_hub)
    start = time.monotonic()
    with pytest.raises(HubError) as caught:
        client.search()
    assert time.monotonic() - start < 2.5  # no retries with long waits: the UI worker is free again
    assert str(caught.value) == _expected(kind, None, "search for LoRAs")
    assert isinstance(caught.value, StudioError)


@pytest.mark.parametrize(("inject", "kind"), CASES)
def test_files_failures(fake_hub, repo, tmp_path, inject, kind):
    client = HubClient(cache_dir=tmp_path / "c", timeout_s=0.5)
    inject(fake_hub)
    with pytest.raises(HubError) as caught:
        client.files(REPO)
    assert str(caught.value) == _expected(kind, REPO, "list LoRA files")


@pytest.mark.parametrize(("inject", "kind"), CASES)
def test_download_failures(fake_hub, repo, tmp_path, inject, kind):
    client = HubClient(cache_dir=tmp_path / "c", timeout_s=0.5)
    inject(fake_hub)
    with pytest.raises(HubError) as caught:
        client.download(REPO, [HIGH])
    assert str(caught.value) == _expected(kind, REPO, "download LoRAs")
    assert client.downloaded() == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (403, _expected("403", REPO, "")),
        (404, "That file is not in alice/wan22-dance-lora on the Hugging Face Hub; refresh the file list."),
    ],
)
def test_download_failures_on_the_file_itself(client, fake_hub, repo, status, expected):
    code = "EntryNotFound" if status == 404 else None
    fake_hub.fail(f"*/resolve/*/{HIGH}", status, error_code=code)
    with pytest.raises(HubError) as caught:
        client.download(REPO, [HIGH])
    assert str(caught.value) == expected
    _no_partial_files(fake_hub, client)


def test_the_rest_works_offline(client, fake_hub, repo):
    (path,) = client.download(REPO, [HIGH])
    fake_hub.env.switch(offline=True)
    fake_hub.clear_requests()
    assert [p for _, p in client.downloaded()] == [path]
    assert [i.label for i in client.library_items()] == ["dance_high_noise"]
    assert client.missing([LoraSource(repo=REPO, file=HIGH)]) == []
    assert client.resolve(LoraSource(repo=REPO, file=HIGH, revision=repo.sha)) == path
    with pytest.raises(HubError, match="switched off"):
        client.search()
    assert fake_hub.requests == []
