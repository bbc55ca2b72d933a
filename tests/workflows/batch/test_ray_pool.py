"""Ray fan-out on a local cluster (``ray.init(num_cpus=2)``): two CPU workers render the same videos as this
process, bit for bit (every render runs with one torch thread, in the workers and here), and a worker
killed mid-scene loses nothing: its scene goes back to the queue and the other worker renders it.

Starting Ray and two workers (each imports torch and diffusers and loads the demo model) takes
tens of seconds on a shared 2-core machine, so the two tests share one cluster and one pool.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.errors import ValidationError
from studio.media.probe import read_frames
from studio.service import Studio
from studio.settings import Settings
from studio.workflows.batch.ray_pool import INSTALL_HINT, RayPool, import_ray
from studio.workflows.batch.runner import InProcess, run_batch
from studio.workflows.batch.scenes import load_batch

TINY = {"width": 32, "height": 32, "frames": 1, "steps": 8}  # long enough to kill a worker mid-render


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_transformer_config, start_image) -> Path:
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("ray-batch")
    (root / "loras").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_lora(
            root / "loras" / f"{name}.safetensors",
            make_lora_tensors(demo_transformer_config, seed=seed, scale=0.3),
        )
    start_image.save(root / "start.png")
    a, b = {"path": "a.safetensors"}, {"path": "b.safetensors", "applies_to": "low_noise"}
    scenes = [
        {"name": "one", "image": "start.png", "prompt": "one", "seed": 1, "loras": [{**a, "weight": 0.5}]},
        {"name": "two", "image": "start.png", "prompt": "two", "seed": 2, "loras": [{**a, "weight": 1.0}]},
        {
            "name": "three",
            "image": "start.png",
            "prompt": "three",
            "seed": 3,
            "loras": [a, {**b, "weight": 0.8}],
        },
        {"name": "four", "image": "start.png", "prompt": "four", "seed": 4, "loras": [b]},
    ]
    doc = {"kind": "wan-lora-studio/scenes", "version": 1, "defaults": TINY, "scenes": scenes}
    (root / "scenes.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def batch_settings(folder, studio_cache, demo_model_dir) -> Settings:
    return Settings(
        lora_dirs=(folder / "loras",), outputs_dir=folder / "outputs", cache_dir=studio_cache, model="demo"
    )


@pytest.fixture(scope="module")
def batch(folder, batch_settings):
    from studio.models.registry import resolve_model

    defaults = resolve_model("demo").defaults.settings_values()
    return load_batch(
        folder / "scenes.json", model_defaults=defaults, roots=batch_settings.resolved_lora_dirs()
    )


@pytest.fixture(scope="module")
def reference(batch, batch_settings, folder) -> dict[str, np.ndarray]:
    """The batch rendered in this process with one torch thread, as the workers use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        studio = Studio(batch_settings)
        summary = run_batch(batch, folder / "in-process", InProcess(studio))
    finally:
        torch.set_num_threads(threads)
    assert summary.complete
    return {job.id: read_frames(folder / "in-process" / job.video) for job in summary.state.jobs}


@pytest.fixture(scope="module")
def pool(batch_settings):
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING")
    pool = RayPool(batch_settings, 2, model="demo", threads=1, max_replacements=0)
    try:
        pool.start()
        yield pool
    finally:
        pool.close()
        ray.shutdown()


def _frames(folder: Path, summary) -> dict[str, np.ndarray]:
    return {job.id: read_frames(folder / job.video) for job in summary.state.jobs}


@pytest.mark.slow
def test_two_workers_render_the_same_videos_as_this_process(pool, batch, folder, reference):
    assert len(pool.workers) == 2 and {w.info["threads"] for w in pool.workers} == {1}
    assert len(set(pool.worker_pids())) == 2 and os.getpid() not in pool.worker_pids()
    summary = run_batch(batch, folder / "ray", pool)
    assert summary.complete
    workers = {job.worker for job in summary.state.jobs}
    assert len(workers) == 2  # both workers rendered
    frames = _frames(folder / "ray", summary)
    for job_id, expected in reference.items():
        assert np.array_equal(frames[job_id], expected), job_id
    records = [json.loads((folder / "ray" / j.sidecar).read_text()) for j in summary.state.jobs]
    assert [r["settings"]["seed"] for r in records] == [1, 2, 3, 4]
    assert all(r["lora_file_reads"] >= 0 for r in records) and {r["kind"] for r in records} == {
        "wan-lora-studio/render"
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_until_busy(pid: int, cpu_s: float = 0.15, timeout_s: float = 30.0) -> None:
    start, deadline = _cpu_seconds(pid), time.monotonic() + timeout_s
    while _cpu_seconds(pid) - start < cpu_s and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.slow
def test_a_worker_killed_mid_scene_loses_nothing(pool, batch, folder, reference):
    events = []
    killed = {}

    def on_event(event):
        events.append(event)
        if event.kind == "start" and not killed:
            pid = next(w.info["pid"] for w in pool.workers if w.name == event.worker)
            _wait_until_busy(pid)  # the worker is inside the render (an idle worker uses no CPU)
            os.kill(pid, signal.SIGKILL)
            killed.update(job=event.job_id, worker=event.worker)

    summary = run_batch(batch, folder / "ray-killed", pool, on_event=on_event)
    assert summary.complete and len(pool.workers) == 1
    job = summary.state.job(killed["job"])
    assert job.attempts == 2 and job.worker != killed["worker"]  # the other worker rendered it
    assert [e.job_id for e in events if e.kind == "requeued"] == [killed["job"]]
    assert sorted(p.name for p in (folder / "ray-killed").iterdir() if "partial" in p.name) == []
    frames = _frames(folder / "ray-killed", summary)
    for job_id, expected in reference.items():
        assert np.array_equal(frames[job_id], expected), job_id


def test_without_ray_workers_say_how_to_install_it(monkeypatch, tmp_path, capsys):
    from studio.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ValidationError, match=re.escape("pip install 'ray>=2.60'")):
        import_ray()
    scenes = tmp_path / "scenes.json"
    Image.new("RGB", (32, 32)).save(tmp_path / "s.png")
    scenes.write_text(
        json.dumps(
            {"kind": "wan-lora-studio/scenes", "version": 1, "scenes": [{"name": "a", "image": "s.png"}]}
        )
    )
    assert (
        main(["batch", str(scenes), "--out", str(tmp_path / "out"), "--model", "demo", "--workers", "2"]) == 2
    )
    assert INSTALL_HINT in capsys.readouterr().err
