"""`python -m studio inspect FILE... [--json] [--model NAME|FOLDER]`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.cli.inspect import add_parser, cmd_inspect
from studio.loras.compat import WAN22_I2V_A14B_TRANSFORMER_CONFIG
from studio.loras.synthetic import WAN_14B_CONFIG, training_metadata, write_layout
from studio.models.demo import TRANSFORMER_CONFIG

REPO = Path(__file__).resolve().parents[2]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="studio")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return parser.parse_args(["inspect", *argv])


@pytest.fixture(scope="module")
def studio_cache(tmp_path_factory) -> Path:
    """One cache folder per module, so the demo model is built once."""
    return tmp_path_factory.mktemp("studio-cache")


@pytest.fixture
def env(monkeypatch, studio_cache, tmp_path):
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.chdir(tmp_path)
    return studio_cache


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    d = tmp_path / "loras"
    meta = training_metadata(trigger_phrase="ohwx dancer, spinning", rank=4, alpha=2.0, title="Spin")
    out = {
        "high": write_layout(
            d / "spin_high_noise.safetensors", TRANSFORMER_CONFIG, "musubi", alpha=2.0, metadata=meta
        ),
        "low": write_layout(d / "spin_low_noise.safetensors", TRANSFORMER_CONFIG, "original", alpha=2.0),
        "i2v": write_layout(d / "wan21_i2v.safetensors", TRANSFORMER_CONFIG, "i2v"),
        "big": write_layout(
            d / "big14b.safetensors",
            WAN_14B_CONFIG,
            "original",
            rank=1,
            blocks=[0, 39],
            modules=["attn1.to_q"],
        ),
        "pickle": d / "old.pt",
        "broken": d / "broken.safetensors",
    }
    out["pickle"].write_bytes(b"\x80\x04not really a pickle")
    out["broken"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    return out


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, our stderr lines: third-party warnings left out)."""
    rc = cmd_inspect(_parse(argv))
    out, err = capsys.readouterr()
    return rc, out, "".join(line for line in err.splitlines(keepends=True) if line.startswith("error: "))


def _rows(block: str) -> dict[str, str]:
    """The ``key  value`` rows of one file's text block."""
    rows = {}
    for line in block.splitlines()[1:]:
        key, _, value = line.strip().partition("  ")
        rows[key] = value.strip()
    return rows


def test_text_output_says_what_the_file_is(env, files, capsys):
    rc, out, err = _run(capsys, [str(files["high"]), str(files["low"])])
    assert rc == 0 and err == ""
    digest = hashlib.sha256(files["high"].read_bytes()).hexdigest()
    first = out.split("\n\n")[0]
    assert first.splitlines()[0] == "spin_high_noise.safetensors"
    rows = _rows(first)
    assert rows["path"] == str(files["high"].resolve())
    assert rows["layout"].startswith("musubi-tuner / Kohya")
    assert rows["base model"] == "the demo model (dim 24)"
    assert rows["rank / alpha"] == "4 / 2"
    assert rows["modules"] == "20 (cross_attn, ffn, self_attn)"
    assert rows["blocks"] == "2 (0–1)"
    assert rows["expert"] == "high-noise (from the file name); its other half: spin_low_noise.safetensors"
    assert rows["trigger words"] == "ohwx dancer, spinning"
    assert rows["sha256"] == digest
    assert rows["size"].endswith(f"({files['high'].stat().st_size:,} bytes)")
    assert rows["title"] == "Spin" and rows["network"] == "networks.lora_wan"
    assert "spin_low_noise.safetensors" in out.split("\n\n")[1]


def test_json_is_one_document_and_errors_come_last(env, files, capsys):
    argv = [str(files[k]) for k in ("low", "pickle", "i2v", "broken")] + [
        str(files["low"].with_name("gone.safetensors"))
    ]
    rc, out, err = _run(capsys, [*argv, "--json", "--no-hash"])
    assert rc == 2
    doc = json.loads(out)
    assert [Path(r["file"]).name for r in doc] == [Path(a).name for a in argv]
    assert [r["ok"] for r in doc] == [True, False, True, False, False]
    low, pickle, i2v, broken, gone = doc
    assert (
        low["info"]["layout"] == "original" and low["info"]["alpha"] == 2.0 and low["info"]["sha256"] is None
    )
    assert low["info"]["expert_hint"] == "low" and low["model"] is None and low["match"] is None
    assert i2v["info"]["image_attention"] is True and i2v["info"]["base_model"].startswith("the demo model")
    assert pickle["info"] is None and "pickle" in pickle["error"]
    assert "not a valid safetensors file" in broken["error"]
    assert "does not exist" in gone["error"]
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"error: {files['pickle']}: old.pt is a PyTorch pickle file")
    assert lines[1].startswith(f"error: {files['broken']}: broken.safetensors is not a valid")
    assert lines[2].startswith("error: ") and "gone.safetensors" in lines[2]


def test_match_against_the_demo_model(env, files, capsys):
    argv = [str(files[k]) for k in ("high", "i2v", "big")]
    rc, out, err = _run(capsys, [*argv, "--json", "--model", "demo"])
    assert rc == 2  # big14b would change nothing on the demo model
    high, i2v, big = json.loads(out)
    assert high["check"] == "match" and high["model"] == "the demo model"
    assert high["match"]["percent"] == 100.0 and high["compat"]["level"] == "compatible"
    # Wan2.1 I2V image attention has nothing to land on in Wan2.2: left out as leftovers, not misses
    assert i2v["match"]["percent"] == 100.0 and i2v["match"]["matched_modules"] == 20
    assert len(i2v["match"]["ignored"]) == 8  # k_img/v_img lora_A/lora_B of 2 blocks
    assert i2v["compat"]["level"] == "compatible" and i2v["ok"]
    assert not big["ok"] and big["match"] is None and big["info"]["model_dim"] == 5120
    assert big["compat"]["level"] == "incompatible"
    assert err.strip().splitlines() == [f"error: {files['big']}: {big['error']}"]
    assert "Wan 14B (dim 5120)" in big["error"]

    rc, out, err = _run(capsys, [str(files["i2v"]), "--model", "demo"])
    assert rc == 0
    assert _rows(out)["match"] == "the demo model: 100% (20 of 20 LoRA modules land)"
    assert "Wan2.1 I2V image-branch parts (k_img/v_img, img_emb: 4 module(s))" in out

    # the demo model's folder works too
    folder = next(env.glob("demo-wan2.2-i2v-v*"))
    rc, out, _ = _run(capsys, [str(files["high"]), "--json", "--model", str(folder)])
    assert rc == 0 and json.loads(out)[0]["match"]["percent"] == 100.0


def test_real_model_folder_without_weights_is_matched_from_its_config(env, files, tmp_path, capsys):
    """A folder with only the configs of Wan2.2 I2V A14B: the real match runs on its layers (no weights)."""
    folder = tmp_path / "a14b"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "WanImageToVideoPipeline",
                "transformer": ["diffusers", "WanTransformer3DModel"],
                "transformer_2": ["diffusers", "WanTransformer3DModel"],
                "boundary_ratio": 0.9,
            }
        )
    )
    (folder / "transformer" / "config.json").write_text(json.dumps(WAN22_I2V_A14B_TRANSFORMER_CONFIG))
    rc, out, err = _run(capsys, [str(files["big"]), str(files["low"]), "--json", "--model", str(folder)])
    assert rc == 2 and err.startswith(f"error: {files['low']}: ")
    big, low = json.loads(out)
    assert big["check"] == "match" and big["model"] == "a14b"
    assert big["match"]["percent"] == 100.0 and big["match"]["model_dim"] == 5120
    assert not low["ok"] and "dim 24" in low["error"] and "dim 5120" in low["error"]


def test_registry_model_without_weights_falls_back_to_the_header_check(files, studio_cache, tmp_path):
    """Runs in its own process so HF_HOME (an empty Hub cache) is read fresh."""
    code = (
        "import sys; from studio.cli.inspect import add_parser, cmd_inspect; import argparse; "
        "p = argparse.ArgumentParser(); s = p.add_subparsers(dest='command'); add_parser(s); "
        "sys.exit(cmd_inspect(p.parse_args(sys.argv[1:])))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "STUDIO_CACHE": str(studio_cache),
    }
    argv = ["inspect", str(files["big"]), str(files["i2v"]), "--model", "wan2.2-i2v-a14b"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert _rows(proc.stdout.split("\n\n")[0])["fits"].startswith(
        "Wan2.2 I2V A14B: compatible (100%, from the header"
    )
    assert "Wan2.2 I2V A14B: incompatible" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {files['i2v']}: This LoRA is for the demo model"
    )

    proc = subprocess.run(
        [sys.executable, "-c", code, *argv[:2], "--json", "--model", "wan2.2-ti2v-5b"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    (big,) = json.loads(proc.stdout)
    assert proc.returncode == 2 and big["check"] == "header" and big["compat"]["level"] == "incompatible"
    assert "Wan2.2 TI2V 5B (dim 3072)" in big["error"]


def test_unknown_model_is_one_error_line(env, files):
    from studio.errors import ModelError

    with pytest.raises(ModelError, match="Unknown model 'nope'"):
        cmd_inspect(_parse([str(files["low"]), "--model", "nope"]))


def test_python_m_studio_inspect(files, studio_cache, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "STUDIO_CACHE": str(studio_cache),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "inspect", str(files["low"]), str(files["pickle"]), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    low, pickle = json.loads(proc.stdout)
    assert low["ok"] and low["info"]["layout"] == "original"
    assert not pickle["ok"] and pickle["info"] is None
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {files['pickle']}: old.pt is a PyTorch pickle")
    )
    help_text = subprocess.run(
        [sys.executable, "-m", "studio", "inspect", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    ).stdout
    assert "--model" in help_text and "--json" in help_text
