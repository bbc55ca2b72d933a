"""Schedules on the command line: ``--lora FILE:HIGH:LOW`` with schedule strings, ``--high-steps``, and
``presets import`` of a Wan2GP ``.lset``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.cli.common import parse_lora_arg, parse_lora_schedules
from studio.cli.main import main
from studio.errors import ValidationError
from studio.stack import schedule as S

ROOT = Path(__file__).resolve().parents[2]


def test_lora_argument_takes_schedules_for_each_expert():
    path, high, low = parse_lora_schedules("dir:x/a.safetensors:1>0 cosine:0.8@0-50%")
    assert path == Path("dir:x/a.safetensors")
    assert S.text(high) == "1>0 cosine" and S.text(low) == "0.8@0-50%"
    path, high, low = parse_lora_schedules("a.safetensors:1,1,0.5,0")
    assert S.text(high) == S.text(low) == "1,1,0.5,0"
    assert parse_lora_schedules("a.safetensors")[1] == S.Constant(value=1.0)
    assert parse_lora_arg("a.safetensors:1@1-2:0") == (Path("a.safetensors"), 1.0, 0.0)
    assert parse_lora_arg("a.safetensors:3:1.5") == (Path("a.safetensors"), 3.0, 1.5)
    with pytest.raises(ValidationError, match=r"--lora 'a.safetensors:1>': '1>' is not a ramp"):
        parse_lora_schedules("a.safetensors:1>")
    with pytest.raises(ValidationError, match="between -10 and 10"):
        parse_lora_schedules("a.safetensors:1:0.5@0-50%:20")


def test_cli_render_with_schedules_records_each_steps_weight(
    tmp_path, studio_cache, demo_model_dir, start_image, make_lora
):
    start = tmp_path / "start.png"
    start_image.save(start)
    lora = make_lora("fade.safetensors", seed=3)
    out = tmp_path / "fade.mp4"
    env = {**os.environ, "STUDIO_CACHE": str(studio_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "render", "--image", str(start), "--prompt", "a cat", "--model", "demo",
         "--lora", f"{lora}:1>0:0.5@3-4", "--frames", "5", "--steps", "4", "--width", "32", "--height", "32",
         "--high-steps", "1", "--seed", "3", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["experts_per_step"] == ["high", "low", "low", "low"]
    assert record["settings"]["high_steps"] == 1
    rows = {r["expert"]: r["weights"] for r in record["lora_weights_per_step"]}
    assert rows == {"high": [1.0, None, None, None], "low": [None, 0.0, 0.5, 0.5]}
    entry = record["stack"]["entries"][0]
    assert (entry["schedule_high"], entry["schedule_low"]) == ("1>0", "0.5@3-4")


def test_presets_import_lays_a_wan2gp_lset_out_for_the_models_split(
    tmp_path, lora_dir, monkeypatch, capsys, studio_cache, demo_model_dir
):
    monkeypatch.setenv("STUDIO_PRESETS", str(tmp_path / "user-presets"))
    monkeypatch.setenv("STUDIO_LORA_DIRS", str(lora_dir))
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    (lora_dir / "style.safetensors").write_bytes(b"")
    lset = tmp_path / "look.lset"
    lset.write_text(json.dumps({"loras": ["style.safetensors"], "loras_mult": "1,0.5;0.2,0.4", "extra": 1}))
    code = main(["presets", "import", str(lset), "--steps", "4", "--model", "demo"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "extra" in err and "2 on the high-noise expert" in err  # demo, 4 steps at shift 5: 2 + 2
    preset = json.loads(next((tmp_path / "user-presets").glob("*.json")).read_text())
    assert preset["settings"] == {"steps": 4, "high_steps": 2}
    entry = preset["entries"][0]
    assert S.weights(S.parse(entry["schedule_high"]), 4)[:2] == (1.0, 0.5)
    assert S.weights(S.parse(entry["schedule_low"]), 4)[2:] == (0.2, 0.4)
