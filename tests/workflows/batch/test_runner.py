"""The in-process batch: stack diffs between scenes (file reads in the record), a failing scene in the middle,
a cancel, and a SIGKILL of a real `python -m studio batch` followed by a re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.errors import RenderCancelled
from studio.service import Studio
from studio.workflows.batch.runner import BatchRunner, InProcess, run_batch
from studio.workflows.batch.scenes import load_batch
from studio.workflows.batch.state import STATE_FILE
from tests.workflows.batch.conftest import TINY

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def studio(settings):
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return studio


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".batch.lock")


def _outputs(*stems: str) -> list[str]:
    return sorted(f"{s}{suffix}" for s in stems for suffix in (".json", ".mp4", ".start.png"))


def test_four_scenes_share_and_swap_loras_reading_only_the_files_that_changed(
    studio, write_scenes, make_lora, lora_dir, demo_defaults, tmp_path
):
    make_lora("a.safetensors", seed=1)
    make_lora("b.safetensors", seed=2)
    a = {"path": "a.safetensors", "name": "A"}
    b = {"path": "b.safetensors", "name": "B", "applies_to": "low_noise"}
    path = write_scenes(
        [
            {"name": "a", "image": "images/start.png", "prompt": "one", "seed": 1, "loras": [{**a, "weight": 0.5}]},
            {"name": "a stronger", "image": "images/start.png", "prompt": "two", "seed": 1, "loras": [{**a, "weight": 0.9}]},
            {"name": "a and b", "image": "images/start.png", "prompt": "three", "seed": 1,
             "loras": [{**a, "weight": 0.9}, {**b, "weight": 1.0}]},
            {"name": "b", "image": "images/start.png", "prompt": "four", "seed": 1, "loras": [{**b, "weight": 0.6}]},
        ],
        defaults={**TINY, "steps": 4},  # both experts run (a LoRA on an expert that runs no step is not read)
    )  # fmt: skip
    batch = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir])
    out = tmp_path / "out"
    seen_on_disk = []

    def on_event(event):
        if event.kind == "start":  # the state on disk already says this scene is running
            jobs = json.loads((out / STATE_FILE).read_text())["jobs"]
            seen_on_disk.append([j["status"] for j in jobs])

    summary = run_batch(batch, out, InProcess(studio), on_event=on_event)
    assert summary.complete and summary.rendered == [j.id for j in batch.jobs]
    assert seen_on_disk == [
        ["running", "pending", "pending", "pending"],
        ["done", "running", "pending", "pending"],
        ["done", "done", "running", "pending"],
        ["done", "done", "done", "running"],
    ]
    reads = [j.file_reads for j in summary.state.jobs]
    assert reads == [1, 0, 1, 0]  # a weight change and a removal read nothing
    records = [json.loads((out / j.sidecar).read_text()) for j in summary.state.jobs]
    assert [r["lora_file_reads"] for r in records] == reads
    weights = [
        sorted((lr["expert"], Path(lr["file"]).name, lr["weight"]) for lr in r["loras"]) for r in records
    ]
    assert weights == [
        [("high", "a.safetensors", 0.5), ("low", "a.safetensors", 0.5)],
        [("high", "a.safetensors", 0.9), ("low", "a.safetensors", 0.9)],
        [("high", "a.safetensors", 0.9), ("low", "a.safetensors", 0.9), ("low", "b.safetensors", 1.0)],
        [("low", "b.safetensors", 0.6)],
    ]
    assert [r["settings"]["prompt"] for r in records] == ["one", "two", "three", "four"]
    assert studio.manager.model_loads == 1 and studio.manager.lora_file_reads == 2
    assert _files(out) == [*_outputs("01-a", "02-a-stronger", "03-a-and-b", "04-b"), STATE_FILE]
    again = run_batch(batch, out, InProcess(studio))  # nothing left to do
    assert again.rendered == [] and again.complete


def test_a_failing_scene_in_the_middle_is_marked_and_the_batch_goes_on(
    studio, write_scenes, make_lora, lora_dir, demo_defaults, tmp_path
):
    make_lora("a.safetensors", seed=1)
    scenes = [
        {
            "name": f"s{i}",
            "image": "images/start.png",
            "prompt": f"p{i}",
            "seed": i,
            "loras": [{"path": "a.safetensors"}],
        }
        for i in range(4)
    ]
    scenes[1]["loras"] = [{"path": "missing.safetensors", "name": "Gone"}]
    batch = load_batch(write_scenes(scenes), model_defaults=demo_defaults, roots=[lora_dir])
    out = tmp_path / "out"
    target = {"job": None}

    def out_of_memory_in_scene_3(where: str) -> None:
        if where == "step" and target["job"] == "03-s2":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def on_event(event):
        if event.kind == "start":
            target["job"] = event.job_id

    studio.manager.fault_hook = out_of_memory_in_scene_3
    summary = run_batch(batch, out, InProcess(studio), on_event=on_event)
    status = [(j.status, j.error) for j in summary.state.jobs]
    assert [s for s, _ in status] == ["done", "failed", "failed", "done"]
    assert "Gone: " in status[1][1] and "was not found" in status[1][1]
    assert status[2][1].startswith("The GPU ran out of memory rendering 1 frames at 32×32")
    assert _files(out) == [*_outputs("01-s0", "04-s3"), STATE_FILE]
    # Fixed (the file is there, memory is back): a re-run renders only the two that failed.
    make_lora("missing.safetensors", seed=3)
    studio.manager.fault_hook = None
    before = {name: (out / name).stat().st_mtime_ns for name in _outputs("01-s0", "04-s3")}
    again = run_batch(batch, out, InProcess(studio))
    assert again.rendered == ["02-s1", "03-s2"] and again.complete
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    assert [j.attempts for j in again.state.jobs] == [1, 2, 2, 1]


def test_cancel_puts_the_running_scene_back_and_keeps_the_finished_ones(
    studio, write_scenes, demo_defaults, tmp_path
):
    scenes = [{"name": f"s{i}", "image": "images/start.png", "seed": i} for i in range(3)]
    batch = load_batch(write_scenes(scenes), model_defaults=demo_defaults)
    out = tmp_path / "out"
    runner = BatchRunner(batch, out, InProcess(studio))

    def on_event(event):
        if event.kind == "step" and event.job_id == "02-s1":
            runner.cancel()  # from a progress callback, as the UI's Cancel or Ctrl-C would

    runner.on_event = on_event
    with pytest.raises(RenderCancelled):
        runner.run()
    state = json.loads((out / STATE_FILE).read_text())
    assert [j["status"] for j in state["jobs"]] == ["done", "pending", "pending"]
    assert _files(out) == [*_outputs("01-s0"), STATE_FILE]


@pytest.mark.slow
def test_sigkill_mid_scene_then_rerun_renders_each_scene_once_and_leaves_no_partial_file(
    write_scenes, make_lora, lora_dir, studio_cache, tmp_path
):
    make_lora("a.safetensors", seed=1)
    scenes = [
        {"name": f"s{i}", "image": "images/start.png", "prompt": f"p{i}", "seed": i,
         "loras": [{"path": "a.safetensors", "weight": 0.5 + 0.1 * i}]}
        for i in range(4)
    ]  # fmt: skip
    path = write_scenes(scenes)
    out = tmp_path / "out"
    env = {**os.environ, "STUDIO_CACHE": str(studio_cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "studio", "batch", str(path), "--out", str(out), "--model", "demo",
           "--lora-dir", str(lora_dir)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("[2/4] s1: step"):  # the second scene is half rendered
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    state = json.loads((out / STATE_FILE).read_text())
    assert [j["status"] for j in state["jobs"]] == ["done", "running", "pending", "pending"]
    first = {name: (out / name).stat().st_mtime_ns for name in _outputs("01-s0")}

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    started = [line.split(":")[0] for line in rerun.stderr.splitlines() if ": rendering" in line]
    assert started == ["[2/4] s1", "[3/4] s2", "[4/4] s3"]  # the finished scene is not rendered again
    assert "4 of 4 scenes done, 0 failed" in rerun.stdout
    assert _files(out) == [*_outputs("01-s0", "02-s1", "03-s2", "04-s3"), STATE_FILE]  # no partial file
    assert {name: (out / name).stat().st_mtime_ns for name in first} == first
    state = json.loads((out / STATE_FILE).read_text())
    assert [(j["status"], j["attempts"]) for j in state["jobs"]] == [
        ("done", 1),
        ("done", 2),
        ("done", 1),
        ("done", 1),
    ]
    for i, job in enumerate(state["jobs"]):
        record = json.loads((out / job["sidecar"]).read_text())
        assert (record["settings"]["prompt"], record["settings"]["seed"]) == (f"p{i}", i)
