"""``python -m studio dataset check`` and ``python -m studio train`` (in process, and Ctrl-C in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "training"))
from trainkit import write_clip, write_image  # noqa: E402

TINY = ["--model", "demo", "--frames", "9", "--width", "32", "--height", "32", "--rank", "4"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def clips(tmp_path, monkeypatch, studio_cache, demo_model_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder, "wave.mp4", "a red wave")
    write_image(folder, "still.png", "a still wave")
    write_clip(folder, "nocap.mp4", None)
    return folder


def test_dataset_check_reports_items_and_exits_2_without_usable_ones(capsys, clips, tmp_path):
    code, out, err = run(capsys, "dataset", "check", str(clips), "--model", "demo", "--frames", "9", "--width", "32",
                         "--height", "32")  # fmt: skip
    assert code == 0, err
    assert "2 usable, 1 left out" in out and "nocap.mp4 has no caption" in out and "wave.mp4: 9 frames" in out
    code, out, _ = run(capsys, "dataset", "check", str(clips), "--model", "demo", "--json")
    data = json.loads(out)
    assert code == 0 and [i["name"] for i in data["items"]] == ["nocap.mp4", "still.png", "wave.mp4"]
    assert data["buckets"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "dataset", "check", str(empty), "--model", "demo")
    assert code == 2 and err.startswith("error: The dataset") and "no usable clip" in err
    code, _, err = run(capsys, "dataset", "check", str(clips), "--frames", "8")
    assert code == 2 and "4k+1" in err


@pytest.mark.slow
def test_train_prints_progress_and_the_json_result(capsys, clips, tmp_path):
    code, out, err = run(
        capsys, "train", str(clips), "--name", "cli", "--steps", "2", "--save-every", "1", *TINY, "--json"
    )
    assert code == 0, err
    assert "step 2/2 high-noise loss" in err and "step 2/2 low-noise loss" in err and "ETA" in err
    data = json.loads(out)
    assert [Path(f).name for f in data["files"]] == [
        "cli_high_noise.safetensors",
        "cli_low_noise.safetensors",
    ]
    assert all(Path(f).parent == tmp_path / "loras" for f in data["files"])
    assert isinstance(data["loss_first"], float) and isinstance(data["loss_last"], float)
    assert set(data["val_loss"]) == {"high", "low"}
    assert set(data["val_loss"]["high"]) == {"base", "trained"}
    assert len(data["checkpoints"]) == 2
    code, _, err = run(capsys, "train", str(clips), "--name", "cli", "--steps", "2", *TINY)
    assert code == 2 and "exists already" in err
    code, _, err = run(capsys, "train", str(clips), *TINY)
    assert code == 2 and "--name" in err


def test_export_config_writes_both_tools_without_training(capsys, clips, tmp_path):
    for tool, expected in (("musubi", "cfg.toml"), ("diffusion-pipe", "cfg_high_noise.toml")):
        code, out, err = run(capsys, "train", str(clips), "--name", "cfg", *TINY, "--export-config", tool,
                             "--config-dir", str(tmp_path / tool))  # fmt: skip
        assert code == 0, err
        assert f"wrote {tmp_path / tool / expected}" in out
        assert (tmp_path / tool / "dataset.toml").is_file()
    assert not (tmp_path / "loras").exists()  # nothing was trained


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(capsys, clips, tmp_path, studio_cache):
    env = {**os.environ, "STUDIO_CACHE": str(studio_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio", "train", str(clips), "--name", "cc", "--steps", "500", *TINY],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if line.startswith("step 2/500 low-noise"):
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "stopping at the next step" in err and "resume with --resume" in err
    checkpoints = sorted((tmp_path / "loras" / ".training" / "cc" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name.startswith("step-")
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < 500
    code, out, err = run(
        capsys, "train", "--resume", str(checkpoints[0]), "--steps", str(stopped_at + 1), "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["steps"] == stopped_at + 1 and not data["stopped"]
    assert len(data["loss"]) == 2 and (tmp_path / "loras" / "cc_high_noise.safetensors").is_file()
