"""Hub repo ids as LoRA paths (``studio.hub.resolve``) against the fake Hub holding the guide's repos."""

from __future__ import annotations

import hashlib

import pytest
from fakehub import unused_loopback_url
from fakehub.guide_repos import LIGHTX2V, LIGHTX2V_FILES, REWARD, REWARD_FILES
from safetensors.torch import save_file

from studio.errors import LoraFileError, ValidationError
from studio.hub.client import HubClient
from studio.hub.common import HubError
from studio.hub.pick import Candidate, experts_for, name_score, pick
from studio.hub.registry import load_registry
from studio.hub.resolve import (
    Fit,
    HubUnavailable,
    RepoPath,
    choose,
    download,
    parse_repo_path,
    resolve_entry,
    resolve_stack,
)
from studio.loras.synthetic import make_lora_tensors
from studio.models.demo import TRANSFORMER_CONFIG
from studio.stack.schema import LoraSource, Stack, StackEntry

DEMO = Fit(task="i2v", experts=2, config=dict(TRANSFORMER_CONFIG), model_name="the demo model")
I2V_HIGH, I2V_LOW = LIGHTX2V_FILES[("i2v", "high")], LIGHTX2V_FILES[("i2v", "low")]
T2V_HIGH, T2V_LOW = LIGHTX2V_FILES[("t2v", "high")], LIGHTX2V_FILES[("t2v", "low")]
HPS_HIGH, HPS_LOW = REWARD_FILES[("hps", "high")], REWARD_FILES[("hps", "low")]
MPS_HIGH, MPS_LOW = REWARD_FILES[("mps", "high")], REWARD_FILES[("mps", "low")]


pytestmark = pytest.mark.usefixtures("loopback_only")  # not even a DNS query leaves the machine


@pytest.fixture
def client(tmp_path) -> HubClient:
    return HubClient(cache_dir=tmp_path / "studio-cache")


def test_what_a_repo_path_is():
    assert parse_repo_path("lightx2v/Wan2.2-Distill-Loras") == RepoPath(LIGHTX2V)
    assert parse_repo_path(f"{REWARD}/{HPS_LOW}") == RepoPath(REWARD, HPS_LOW)
    assert parse_repo_path("owner1/name/sub/dir/x.safetensors") == RepoPath(
        "owner1/name", "sub/dir/x.safetensors"
    )
    assert parse_repo_path("hf://a/b") == RepoPath("a/b")
    for local in (
        "x.safetensors",
        "styles/anime.safetensors",
        "/abs/a/b",
        "./a/b",
        "~/a/b",
        "a/b/c",
        "a",
        "",
    ):
        assert parse_repo_path(local) is None, local
    for placeholder in ("lightx2v/...", "lightx2v/…", "<owner>/<name>", "your-name/your-lora"):
        with pytest.raises(LoraFileError, match="is a placeholder, not a LoRA"):
            parse_repo_path(placeholder)
    assert experts_for("both") == ("high", "low") and experts_for("high") == ("high",)
    assert experts_for("low_noise") == ("low",)
    with pytest.raises(
        ValidationError, match=r"applies_to must be 'both', 'high_noise' or 'low_noise'.*'middle'"
    ):
        experts_for("middle")


def test_a_placeholder_makes_no_hub_call(guide_hub, client):
    guide_hub.clear_requests()
    with pytest.raises(LoraFileError, match="placeholder"):
        resolve_entry(client, "lightx2v/...", fit=DEMO)
    assert guide_hub.requests == []


@pytest.mark.parametrize(
    ("experts", "fit", "expected"),
    [
        (("high",), DEMO, {"high": I2V_HIGH}),
        (("low",), DEMO, {"low": I2V_LOW}),
        (("high", "low"), DEMO, {"high": I2V_HIGH, "low": I2V_LOW}),
        (("high", "low"), Fit(task="t2v"), {"high": T2V_HIGH, "low": T2V_LOW}),
    ],
    ids=["high-noise", "low-noise", "both-is-the-pair", "t2v-model"],
)
def test_lightx2v_picks_the_task_and_the_expert(guide_hub, client, experts, fit, expected):
    choice = choose(client, LIGHTX2V, experts, fit=fit)
    assert choice.files == expected
    assert choice.revision == guide_hub.repo(LIGHTX2V).sha
    for file in expected.values():
        data = guide_hub.guide_files[LIGHTX2V][file]
        assert choice.sha256[file] == hashlib.sha256(data).hexdigest()  # pinned: commit + sha256


@pytest.mark.parametrize(
    ("name", "expected"),
    [("hpsv2_quality", HPS_LOW), ("HPS2.1 reward", HPS_LOW), ("mps_quality", MPS_LOW)],
)
def test_the_name_tells_reward_files_apart(guide_hub, client, name, expected):
    assert choose(client, REWARD, ("low",), name=name, fit=DEMO).files == {"low": expected}


def test_several_or_no_fitting_files_are_refused_with_the_candidates(guide_hub, client):
    with pytest.raises(LoraFileError) as caught:
        choose(client, REWARD, ("low",), fit=DEMO)
    message = str(caught.value)
    assert message.startswith(f"2 files of {REWARD} fit the low-noise expert of the demo model:")
    assert HPS_LOW in message and MPS_LOW in message and f"e.g. {REWARD}/" in message
    assert "(or give a name that tells them apart)" in message
    with pytest.raises(LoraFileError) as caught:
        choose(client, REWARD, ("high", "low"), name="quality", fit=DEMO)  # two pairs, the name says nothing
    assert "2 files of" in str(caught.value) and f"{HPS_HIGH} + {HPS_LOW}" in str(caught.value)

    # a repo whose files are all for another model size: none fits, each is listed
    guide_hub.add_repo("someone/big-loras", {"big.safetensors": _file_bytes(config="14B")})
    with pytest.raises(LoraFileError) as caught:
        choose(client, "someone/big-loras", ("high", "low"), fit=DEMO)
    assert str(caught.value).startswith(
        "None of the 1 .safetensors files of someone/big-loras fits both experts"
    )
    assert "big.safetensors (does not fit the loaded model)" in str(caught.value)
    assert "name one as someone/big-loras/FILE.safetensors" in str(caught.value)
    guide_hub.add_repo("someone/empty", {"README.md": b"# nothing"})
    with pytest.raises(LoraFileError, match=r"has no \.safetensors files"):
        choose(client, "someone/empty", ("high",), fit=DEMO)


def test_a_named_file_is_taken_as_it_is(guide_hub, client):
    choice = choose(client, f"{LIGHTX2V}/{T2V_LOW}", ("high", "low"), fit=DEMO)
    assert choice.files == {"high": T2V_LOW, "low": T2V_LOW}
    with pytest.raises(LoraFileError, match=r"nope.safetensors is not a .safetensors file of lightx2v"):
        choose(client, f"{LIGHTX2V}/nope.safetensors", ("high",), fit=DEMO)


def test_an_unknown_repo_says_so(guide_hub, client):
    with pytest.raises(HubError, match="someone/missing was not found on the Hugging Face Hub"):
        choose(client, "someone/missing", ("high",), fit=DEMO)


def test_resolve_entry_downloads_pinned_and_records_it(guide_hub, client, tmp_path):
    entry, _ = resolve_entry(client, LIGHTX2V, name="lightx2v", weight_high=1.0, weight_low=0.5, fit=DEMO)
    sha = guide_hub.repo(LIGHTX2V).sha
    assert entry.name == "lightx2v" and (entry.weight_high, entry.weight_low) == (1.0, 0.5)
    assert entry.high == LoraSource(
        repo=LIGHTX2V,
        file=I2V_HIGH,
        revision=sha,
        sha256=hashlib.sha256(guide_hub.guide_files[LIGHTX2V][I2V_HIGH]).hexdigest(),
    )
    assert entry.low.file == I2V_LOW and entry.low.revision == sha
    registry = {(e["repo"], e["file"], e["revision"]) for e in load_registry(client.cache_dir)}
    assert {(LIGHTX2V, I2V_HIGH, sha), (LIGHTX2V, I2V_LOW, sha)} <= registry
    assert client.resolve(entry.high).read_bytes() == guide_hub.guide_files[LIGHTX2V][I2V_HIGH]

    # a local file wins over the Hub, with no Hub call
    local = tmp_path / "loras" / "style.safetensors"
    local.parent.mkdir()
    save_file(make_lora_tensors(dict(TRANSFORMER_CONFIG)), str(local))
    guide_hub.clear_requests()
    entry, _ = resolve_entry(client, "style.safetensors", roots=[local.parent], experts=("low",))
    assert entry.low.path == str(local) and entry.high is None and entry.weight_high == 0
    assert guide_hub.requests == []
    with pytest.raises(LoraFileError, match=r"neither a .safetensors file on this machine.*nor a Hub repo"):
        resolve_entry(client, "gone.safetensors", roots=[local.parent])


def test_offline_uses_the_cache_and_says_so_without_it(guide_hub, client):
    online = choose(client, LIGHTX2V, ("high", "low"), fit=DEMO)
    download(client, online)
    guide_hub.env.switch(offline=True)
    guide_hub.clear_requests()
    cached = choose(client, LIGHTX2V, ("high", "low"), fit=DEMO)
    assert cached.files == online.files and cached.revision == online.revision and cached.from_cache
    assert any("Hugging Face cache" in n for n in cached.notes)
    assert guide_hub.requests == []
    download(client, cached)  # nothing to fetch; the cached files' sha256s are filled in
    assert cached.sha256 == online.sha256
    with pytest.raises(HubUnavailable) as caught:
        choose(client, REWARD, ("low",), name="hpsv2", fit=DEMO)
    assert str(caught.value) == (
        f"{REWARD} cannot be used: the studio is offline (HF_HUB_OFFLINE is set), and {REWARD} is not in the "
        "Hugging Face cache. Go online once to download it, or give a .safetensors file on this machine."
    )
    # the Hub unreachable (not switched off): the same cache is used
    guide_hub.env.switch(offline=False, endpoint=unused_loopback_url())
    assert choose(client, LIGHTX2V, ("low",), fit=DEMO).files == {"low": I2V_LOW}
    with pytest.raises(HubUnavailable, match="the Hugging Face Hub cannot be reached"):
        choose(client, REWARD, ("low",), name="hpsv2", fit=DEMO)


def test_resolve_stack_replaces_repo_paths_only(guide_hub, client, tmp_path):
    plain = Stack(entries=[StackEntry.single(tmp_path / "x.safetensors")])
    guide_hub.clear_requests()
    assert resolve_stack(client, plain, fit=DEMO) == (plain, [])
    assert guide_hub.requests == []
    stack = Stack(
        entries=[
            StackEntry(name="speed", high=LoraSource(path=LIGHTX2V), low=LoraSource(path=LIGHTX2V)),
            StackEntry(name="hpsv2_quality", low=LoraSource(path=REWARD), weight_high=0.0, weight_low=0.4),
            StackEntry(name="off", high=LoraSource(path="someone/missing"), enabled=False),
        ]
    )
    resolved, _ = resolve_stack(client, stack, fit=DEMO)
    speed, quality, off = resolved.entries
    assert (speed.high.file, speed.low.file) == (I2V_HIGH, I2V_LOW) and speed.id == stack.entries[0].id
    assert quality.low.file == HPS_LOW and quality.high is None and quality.weight_low == 0.4
    assert off.high.path == "someone/missing"  # switched off: never looked up
    assert all(client.resolve(s).is_file() for s in (speed.high, speed.low, quality.low))


def test_picking_without_the_network():
    def c(file, expert=None, partner=None, task=None):
        from studio.loras.inspect import LoraInfo

        info = LoraInfo(
            path=file, file_name=file, file_size=1, layout="original", layout_label="x", task=task
        )
        return Candidate(file, info, None, None, expert, partner)

    cands = [
        c("a_high.safetensors", "high", "a_low.safetensors"),
        c("a_low.safetensors", "low", "a_high.safetensors"),
    ]
    assert pick("o/r", cands, ("high", "low"))[0] == {
        "high": "a_high.safetensors",
        "low": "a_low.safetensors",
    }
    assert pick("o/r", cands, ("low",))[0] == {"low": "a_low.safetensors"}
    single = [c("style.safetensors")]
    assert pick("o/r", single, ("high",))[0] == {"high": "style.safetensors"}  # unmarked: fits any expert
    assert pick("o/r", single, ("high", "low"), fit=Fit(experts=1))[0] == {
        "high": "style.safetensors",
        "low": "style.safetensors",
    }
    assert name_score("hpsv2_quality", "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1") == 1
    assert name_score("hpsv2_quality", "Wan2.2-Fun-A14B-InP-low-noise-MPS") == 0


def test_a_remote_header_length_ending_in_0x80_is_read(fake_hub, client):
    """Its first byte is 0x80, like a pickle's, but a sane length followed by "{" is a safetensors prefix."""
    from safetensors.torch import save

    tensors = make_lora_tensors(dict(TRANSFORMER_CONFIG), rank=1, blocks=[0], modules=["attn1.to_q"])
    for pad in range(400):
        data = save(tensors, metadata={"pad": "x" * pad})
        if int.from_bytes(data[:8], "little") % 256 == 0x80:
            break
    assert data[0] == 0x80 and data[8:9] == b"{"
    fake_hub.add_repo("alice/odd-length", {"lora.safetensors": data})
    remote = client.files("alice/odd-length", model_config=dict(TRANSFORMER_CONFIG)).file("lora.safetensors")
    assert remote.error is None and remote.info.num_modules == 1 and remote.compat.level == "compatible"
    fake_hub.add_repo(
        "alice/sneaky2", {"lora.safetensors": b"\x80\x02" + b"\x00" * 6 + b"\x8a" + b"\x00" * 700}
    )
    assert "pickle" in client.files("alice/sneaky2").file("lora.safetensors").error


def _file_bytes(*, config: str) -> bytes:
    from safetensors.torch import save

    from studio.loras.synthetic import WAN_14B_CONFIG

    cfg = WAN_14B_CONFIG if config == "14B" else dict(TRANSFORMER_CONFIG)
    return save(make_lora_tensors(cfg, rank=1, blocks=[0], modules=["attn1.to_q"]))
