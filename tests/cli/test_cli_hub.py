"""``python -m studio hub search|files|download`` against the loopback fake Hub (the real client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub

from studio.cli.main import main
from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors, training_metadata, write_lora
from studio.models.demo import TRANSFORMER_CONFIG

ROOT = Path(__file__).resolve().parents[2]
REPO = "alice/wan22-dance-lora"
HIGH, LOW = "dance_high_noise.safetensors", "dance_low_noise.safetensors"
README = """---
base_model: Wan-AI/Wan2.2-I2V-A14B
tags: [lora]
---
# Dance

A dancing LoRA for Wan2.2 that makes people dance.

Trigger words: `sks dance`, `spin`
"""


pytestmark = pytest.mark.usefixtures("loopback_only")  # not even a DNS query leaves the machine


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "studio-cache"))
    monkeypatch.delenv("STUDIO_MODEL", raising=False)
    return tmp_path / "studio-cache"


@pytest.fixture
def repo(fake_hub: FakeHub, tmp_path):
    src = tmp_path / "src"
    files = {
        HIGH: write_lora(src / HIGH, make_lora_tensors(TRANSFORMER_CONFIG, layout="original", seed=1)),
        LOW: write_lora(src / LOW, make_lora_tensors(TRANSFORMER_CONFIG, layout="original", seed=2)),
        "big14b.safetensors": write_lora(
            src / "big14b.safetensors",
            make_lora_tensors(WAN_14B_CONFIG, blocks=[0], modules=["attn1.to_q"], rank=2),
            training_metadata(trigger_phrase="bigword"),
        ),
    }
    return fake_hub.add_repo(
        REPO,
        {**files, "README.md": README},
        downloads=42,
        likes=5,
        tags=["lora", "base_model:adapter:Wan-AI/Wan2.2-I2V-A14B", "image-to-video"],
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["hub", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_text_and_json(env, repo, capsys):
    code, out, _ = run(capsys, "search")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{REPO}  by alice  downloads 42  likes 5  updated 20")
    assert lines[0].endswith("[Wan2.2, I2V]")
    assert lines[1] == "    A dancing LoRA for Wan2.2 that makes people dance."
    assert lines[2] == "    trigger words: sks dance, spin"

    code, out, _ = run(
        capsys, "search", "dance", "--wan", "2.2", "--task", "i2v", "--sort", "likes", "--json"
    )
    assert code == 0
    (item,) = json.loads(out)
    assert (item["repo_id"], item["downloads"], item["likes"], item["wan_versions"]) == (REPO, 42, 5, ["2.2"])
    assert item["trigger_words"] == ["sks dance", "spin"]

    code, out, _ = run(capsys, "search", "--wan", "2.1")
    assert (code, out) == (0, "no Wan LoRAs found\n")


def test_files_lists_pairs_with_the_remote_inspection(env, repo, capsys):
    code, out, _ = run(capsys, "files", REPO, "--model", "demo")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"{REPO} @ main ({repo.sha}), checked against the demo model"
    assert "- big14b.safetensors" in out and "Wan 14B (dim 5120)" in out and "incompatible (0%)" in out
    assert lines[3] == "- dance: high/low pair, 40.6 kB"
    high = next(line for line in lines if line.strip().startswith(f"high: {HIGH}"))
    assert "original Wan / ComfyUI" in high and "high-noise" in high and "compatible (100%)" in high

    code, out, _ = run(capsys, "files", REPO, "--json")  # default: checked against Wan2.2 I2V A14B
    data = json.loads(out)
    compat = {f["file"]: f["compat"]["level"] for f in data["files"]}
    assert compat == {"big14b.safetensors": "compatible", HIGH: "incompatible", LOW: "incompatible"}
    assert [it["kind"] for it in data["items"]] == ["single", "pair"]

    code, out, _ = run(capsys, "files", REPO, "--model", "none", "--json")
    assert all(f["compat"] is None for f in json.loads(out)["files"])


def test_download_prints_paths_and_fetches_once(env, fake_hub, repo, capsys):
    code, out, err = run(capsys, "download", REPO, HIGH, LOW)
    assert code == 0, err
    paths = [Path(p) for p in out.splitlines()]
    assert [p.name for p in paths] == [HIGH, LOW] and all(p.is_file() for p in paths)
    assert paths[0].parent.name == repo.sha
    assert "(100%)" in err
    fake_hub.clear_requests()
    code, out2, _ = run(capsys, "download", REPO, HIGH, "--revision", repo.sha)
    assert (code, out2.splitlines()) == (0, [str(paths[0])])
    assert fake_hub.requests == []
    registry = json.loads((env / "hub-downloads.json").read_text())
    assert {e["file"] for e in registry["files"]} == {HIGH, LOW}


@pytest.mark.parametrize(
    ("argv", "setup", "message"),
    [
        (
            ["search"],
            lambda hub: hub.env.switch(offline=True),
            "error: The Hugging Face Hub is switched off (HF_HUB_OFFLINE is set); unset it to search for LoRAs "
            "from the Hub.",
        ),
        (
            ["files", "bob/nothing-here"],
            None,
            "error: bob/nothing-here was not found on the Hugging Face Hub; check the name or your access token.",
        ),
        (
            ["download", REPO, "model.pt"],
            None,
            "error: model.pt is a PyTorch pickle file (.pt); loading a pickle can run any code hidden in it, so "
            "the studio only downloads .safetensors LoRAs.",
        ),
        (
            ["files", REPO, "--revision", "v9"],
            None,
            f"error: That revision of {REPO} does not exist on the Hugging Face Hub; check the revision.",
        ),
        (
            ["files", REPO, "--model", "nope"],
            None,
            "error: Unknown model 'nope' for --model: choose wan2.2-i2v-a14b, wan2.2-ti2v-5b, demo, a "
            "diffusers Wan folder (with transformer/config.json), or none.",
        ),
        (["search", "--sort", "stars"], None, None),
    ],
)
def test_failures_are_one_error_line(env, fake_hub, repo, capsys, argv, setup, message):
    if setup:
        setup(fake_hub)
    if message is None:  # argparse: one line too
        with pytest.raises(SystemExit) as caught:
            main(["hub", *argv])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: argument --sort: invalid choice")
        return
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", message + "\n")


def test_python_m_studio_hub(env, repo, fake_hub):
    # HF_ENDPOINT (set by the fake Hub's environment) reaches a fresh process: nothing but loopback is used
    result = subprocess.run(
        [sys.executable, "-m", "studio", "hub", "files", REPO, "--model", "demo", "--json"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sha"] == repo.sha
    assert fake_hub.requests_for(f"/api/models/{REPO}")
