"""11. Batches: switching scenes, and what a Ray worker costs over rendering in this process.

- ``scene_switch_ratio``: two scenes of a scene file (resolved by the studio's scene parser),
  the second with one new rank-64 LoRA on top of the first's; the time the manager takes to
  switch from the first scene's stack to the second's (exactly what the batch runner does
  before a render) ÷ reading that new file's bytes. Subject: the Wan2.1 1.3B block shape.
  Target ≤ 3.
- ``ray_overhead``: the same 4-scene batch (scenes that share and swap LoRAs; demo model,
  64×64, 9 frames, 4 steps) rendered and saved by the batch runner in this process vs on one
  Ray worker (a local Ray; the worker holds its own pipeline manager and returns each result
  to this process, which writes the files), both warm and with the same torch thread count,
  timed in alternating rounds: (Ray − in-process) ÷ in-process. Target ≤ 0.15.

Both parts run with one torch thread (``BENCH_BATCH_THREADS``), see THREADS below.

Run alone: ``python -m bench.batch``.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from bench import common
from bench.add_lora import read_bytes
from bench.context import Context, standalone
from bench.subjects import WAN13, lora_file

TITLE = "11. Batches: scene switch (Wan2.1 1.3B shape) and Ray worker overhead (demo model)"
# Torch threads for both parts (and for the Ray worker). On the shared 2-core machines here two
# threads per process mostly measure the neighbours (OpenMP barriers waiting for a descheduled
# thread: the same in-process batch took 7–41 s against 1.2 s on the worker); one thread does not.
THREADS = int(os.environ.get("BENCH_BATCH_THREADS", "1"))
RAY_SCENE = {"width": 64, "height": 64, "frames": 9, "steps": 4}


def _scene_file(folder, scenes, defaults) -> object:
    doc = {"kind": "wan-lora-studio/scenes", "version": 1, "defaults": defaults, "scenes": scenes}
    path = folder / "scenes.json"
    path.write_text(json.dumps(doc))
    return path


def _start_image(folder):
    path = folder / "start.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(path)
    return path


def scene_switch(ctx: Context) -> tuple[list, dict[str, float]]:
    from studio.stack.schema import Stack
    from studio.workflows.batch.scenes import load_batch

    mgr = ctx.manager(WAN13)
    first, new = lora_file(WAN13, 64, seed=301), lora_file(WAN13, 64, seed=302)
    folder = ctx.tmp / "scene-switch"
    folder.mkdir()
    _start_image(folder)
    scenes = [
        {"name": "one", "image": "start.png", "loras": [{"path": str(first), "weight": 0.8}]},
        {
            "name": "two",
            "image": "start.png",
            "loras": [{"path": str(first), "weight": 0.8}, {"path": str(new)}],
        },
    ]
    batch = load_batch(
        _scene_file(folder, scenes, {}), model_defaults={}, roots=mgr.settings.resolved_lora_dirs()
    )
    one, two = batch.jobs
    read_bytes(new)  # into the page cache, like the read it is compared with
    mgr.apply_stack(two.stack)  # sha256 of both files cached, as after a first batch
    mgr.apply_stack(Stack())
    repeats = max(ctx.repeats, 5)
    common.status(f"timing scene switches with one new rank-64 LoRA × {repeats}")
    reads = []

    def switch():
        before = mgr.lora_file_reads
        mgr.apply_stack(two.stack)
        reads.append(mgr.lora_file_reads - before)

    times = common.interleaved(
        {
            "read": (None, lambda: read_bytes(new), None),
            "switch": (lambda: mgr.apply_stack(one.stack), switch, None),
        },
        repeats,
    )
    mgr.apply_stack(Stack())
    pair = common.Pair(times["switch"], times["read"])
    mb = os.path.getsize(new) / 1e6
    row = [
        "scene switch: + one rank-64 LoRA",
        f"{common.ms(pair.num)} ms",
        f"{common.ms(pair.den)} ms ({mb:.0f} MB)",
        f"{pair.ratio:.2f}",
        "≤ 3",
        f"{max(reads)} file read per switch, {THREADS} torch thread(s)",
    ]
    return [row], {"scene_switch_ratio": pair.ratio, "scene_switch_file_reads": float(max(reads))}


def ray_overhead(ctx: Context) -> tuple[list, dict[str, float]]:
    import torch

    from studio.loras.synthetic import make_lora_tensors, write_lora
    from studio.models.registry import resolve_model
    from studio.service import Studio
    from studio.settings import Settings
    from studio.workflows.batch.ray_pool import RayPool, import_ray
    from studio.workflows.batch.runner import InProcess, run_batch
    from studio.workflows.batch.scenes import load_batch

    ray = import_ray()
    folder = ctx.tmp / "ray"
    (folder / "loras").mkdir(parents=True)
    _start_image(folder)
    from studio.models.demo import TRANSFORMER_CONFIG

    for name, seed in (("a", 1), ("b", 2)):
        write_lora(
            folder / "loras" / f"{name}.safetensors",
            make_lora_tensors(TRANSFORMER_CONFIG, seed=seed, scale=0.3),
        )
    a, b = {"path": "a.safetensors"}, {"path": "b.safetensors", "applies_to": "low_noise"}
    scenes = [
        {"name": "one", "image": "start.png", "seed": 1, "loras": [{**a, "weight": 0.5}]},
        {"name": "two", "image": "start.png", "seed": 2, "loras": [{**a, "weight": 1.0}]},
        {"name": "three", "image": "start.png", "seed": 3, "loras": [a, {**b, "weight": 0.8}]},
        {"name": "four", "image": "start.png", "seed": 4, "loras": [b]},
    ]
    cache = ctx.settings().cache_dir
    settings = Settings(
        lora_dirs=(folder / "loras",), outputs_dir=folder / "outputs", cache_dir=cache, model="demo"
    )
    defaults = resolve_model("demo").defaults.settings_values()
    batch = load_batch(
        _scene_file(folder, scenes, RAY_SCENE), model_defaults=defaults, roots=settings.resolved_lora_dirs()
    )
    threads = torch.get_num_threads()
    common.status(f"starting a local Ray and one worker ({threads} torch threads, as here)")
    ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, logging_level="ERROR")
    pool = RayPool(settings, 1, model="demo", threads=threads)
    try:
        pool.start()
        studio = Studio(settings)
        local = InProcess(studio)
        runs = {"n": 0}

        def batch_on(backend):
            runs["n"] += 1
            out = folder / f"run{runs['n']}"
            summary = run_batch(batch, out, backend)
            assert summary.complete, summary.state
            shutil.rmtree(out)

        batch_on(local)  # warm both: model loaded, LoRAs read once, first-call costs paid
        batch_on(pool)
        repeats = max(ctx.repeats, 3)
        common.status(f"timing the 4-scene batch in-process vs on one Ray worker × {repeats}")
        times = common.interleaved(
            {
                "in-process": (None, lambda: batch_on(local), None),
                "ray": (None, lambda: batch_on(pool), None),
            },
            repeats,
        )
    finally:
        pool.close()
        ray.shutdown()
    pair = common.Pair(times["ray"], times["in-process"])
    overhead = pair.ratio - 1.0
    row = [
        "4 scenes on 1 Ray worker vs in-process",
        f"{common.ms(pair.num)} ms",
        f"{common.ms(pair.den)} ms (in-process)",
        f"{overhead:+.3f}",
        "≤ 0.15",
        f"{threads} torch threads each",
    ]
    return [row], {"ray_overhead": overhead, "ray_batch_s": pair.num, "inprocess_batch_s": pair.den}


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    import torch

    rows, keys = [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for part in (scene_switch, ray_overhead):
            found_rows, found = part(ctx)
            rows += found_rows
            keys.update(found)
    finally:
        torch.set_num_threads(threads)
    text = common.table(
        TITLE + f"; medians of paired rounds ({ctx.repeats}–5)",
        ["what", "time", "compared with", "ratio / overhead", "target", "note"],
        rows,
    )
    return text, keys


if __name__ == "__main__":
    standalone(run)
