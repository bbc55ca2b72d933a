"""bench/gpu_check: the script's own logic on the CPU (demo shapes), its import graph and its wheel list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_deps

ROOT = Path(__file__).resolve().parents[2]
# What the GPU machine lacks and the check must not need (ftfy and diffusers come as wheels).
BLOCKED = ("gradio", "pydantic", "imageio_ffmpeg")
RUN_WITHOUT = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not on the GPU machine")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["bench.gpu_check", *sys.argv[1:]]
runpy.run_module("bench.gpu_check", run_name="__main__")
"""


@pytest.mark.slow  # a CPU inductor compile of the demo block and a tiny render: ~1-2 min
def test_the_tiny_check_writes_every_section_without_gradio_pydantic_or_imageio_ffmpeg(tmp_path):
    out = tmp_path / "check.json"
    args = [
        "--device",
        "cpu",
        "--tiny",
        "--quick",
        "--budget-scale",
        "8",
        "--deadline",
        "1500",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, *args], cwd=ROOT, capture_output=True, text=True, timeout=1700
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["errors"] == {}, data["errors"]
    sections = data["sections"]
    assert {"device", "versions", "attention", "matmul"} <= set(sections["env"])
    assert sections["env"]["attention"]["diffusers_backend"] == "native"
    assert {
        "subject",
        "base",
        "load_loras",
        "weight_change_s",
        "unfused4",
        "fuse_s",
        "fused4",
        "unfuse_s",
    } <= set(sections["forward"])
    assert sections["forward"]["subject"]["tokens"] == 8  # 32×32×5: latent 2×4×4, patches 2×2×2
    assert {"setup", "after_first", "after_last", "change_s", "changes_done"} <= set(sections["soak"])
    assert sections["soak"]["changes_done"] == 10
    compiled = sections["compiled"]
    assert {"room", "first_forward_s", "hotswap4", "empty_room"} <= set(compiled)
    assert compiled["recompiled"] == {
        "weights": False,
        "all_off": False,
        "swap": False,
        "remove_all": False,
    }
    render = sections["render"]["cpu"]
    assert render["total_s"] > 0 and len(render["step_s"]) == 3 and render["estimated_gib"] > 0
    assert set(data["skipped"]) == {"render.gpu", "render.model-offload"}
    summary = data["summary"]
    assert (
        summary["recompiles"] == 0 and summary["base_s"] > 0 and summary["targets_met"]["recompiles"] is True
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("base_s=") and "recompiles=0" in last


def test_the_pinned_wheels_are_the_versions_the_suite_runs_with():
    assert gpu_deps.needed() == []


def test_the_readme_gives_the_download_line_of_the_pins():
    readme = (ROOT / "bench" / "README.md").read_text()
    assert gpu_deps.download_line(".gpu_wheels") in readme


def test_version_rules():
    assert gpu_deps._version_tuple("2.11.0+cu130") == (2, 11, 0)
    assert gpu_deps._version_tuple("0.8.0rc1") < gpu_deps._version_tuple("0.8.1")
    assert gpu_deps._version_tuple("0.7.9") < gpu_deps._version_tuple("0.8.0")
