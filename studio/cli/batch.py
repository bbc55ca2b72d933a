"""``python -m studio batch SCENES.json --out DIR [--workers N] [--concat OUT.mp4]``: render a scene file.

Every scene is rendered into DIR (MP4 + sidecar + start image per scene), with progress per scene
and overall on stderr; running it again renders only what is not done. Exit status: 0 when every
scene is done, 1 when some failed (each with its sentence; a re-run tries them again), 2 for a bad
scene file or another user error, 130 on Ctrl-C (finished scenes are kept). ``--workers N`` renders
on N Ray workers (one GPU each; ``--ray-address ray://head:10001`` joins a cluster). The engine
flags and helpers here are shared with :mod:`studio.cli.grid`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from studio.engine.memory import MODES, PRECISIONS, MemoryConfig
from studio.errors import ValidationError

EXIT_FAILED_SCENES = 1


def add_engine_flags(p) -> None:
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a folder")
    p.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p.add_argument("--out", required=True, help="the folder to render into (created; re-running resumes)")
    p.add_argument("--workers", type=int, default=None, help="render on N Ray workers (one GPU each)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster, e.g. ray://head:10001")
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU worker")
    p.add_argument("--mode", choices=MODES, default="auto", help="memory mode (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="storage of the experts' weights")
    p.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (lower peak)")


def add_parser(subparsers) -> None:
    b = subparsers.add_parser("batch", help="render a scene file (resumable; several GPUs with --workers)")
    b.add_argument("scenes", help="the scene file (.json, kind wan-lora-studio/scenes)")
    add_engine_flags(b)
    b.add_argument("--concat", default=None, metavar="OUT.mp4", help="also join the scenes into one MP4")
    b.set_defaults(run=cmd_batch)


# ----------------------------------------------------------------------------- shared


def studio_settings(args, extra_dirs=()):
    from studio.settings import Settings

    settings = Settings.from_env(model=args.model)
    dirs = [Path(p).expanduser() for p in args.lora_dir] + list(extra_dirs)
    return settings.with_(lora_dirs=[*settings.lora_dirs, *dirs])


def memory_config(args) -> MemoryConfig:
    return MemoryConfig(mode=args.mode, precision=args.precision, vae_tiling=args.vae_tiling)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def backend_for(args, settings, model: str | None):
    """The in-process backend, or a Ray pool for ``--workers`` (Ray is optional: a sentence says how to get it)."""
    memory = memory_config(args)
    if args.workers is None:
        from studio.engine.manager import PipelineManager
        from studio.service import Studio
        from studio.workflows.batch.runner import InProcess

        manager = PipelineManager(settings, memory=memory)
        manager.load_model(model)
        return InProcess(Studio(settings, manager)), None
    from studio.workflows.batch.ray_pool import RayPool

    pool = RayPool(
        settings,
        args.workers,
        model=model,
        memory=memory,
        address=args.ray_address,
        threads=args.threads,
        on_note=lambda text: say(f"note: {text}"),
    )
    return pool, pool


def run_batch_command(batch, out: Path, backend) -> object:
    from studio.workflows.batch.runner import BatchRunner

    runner = BatchRunner(batch, out, backend, on_event=lambda event: say(event.line()))
    previous = signal.signal(signal.SIGINT, lambda *_: runner.cancel())
    try:
        return runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def report(summary) -> int:
    counts = summary.counts
    print(
        f"{counts['done']} of {len(summary.state.jobs)} scenes done, {counts['failed']} failed: {summary.out_dir}"
    )
    for job in summary.state.jobs:
        if job.status == "failed":
            print(f"failed: {job.scene}: {job.error}")
    return 0 if summary.complete else EXIT_FAILED_SCENES


# ----------------------------------------------------------------------------- batch


def cmd_batch(args) -> int:
    from studio.models.registry import default_model_name, resolve_model
    from studio.workflows.batch.scenes import load_scene_file, resolve_scenes
    from studio.workflows.presets.store import PresetStore

    path = Path(args.scenes).expanduser().resolve()
    scene_file = load_scene_file(path)
    settings = studio_settings(args, [path.parent])
    model = args.model or scene_file.model or default_model_name(settings)
    spec = resolve_model(model)
    batch = resolve_scenes(
        scene_file,
        path.parent,
        model_defaults=spec.defaults.settings_values(),
        roots=settings.resolved_lora_dirs(),
        presets=PresetStore.for_settings(settings),
        model=spec.name,
        source=path,
    )
    for note in batch.notes:
        say(f"note: {note}")
    if args.concat:
        concat = Path(args.concat).expanduser()
        if concat.suffix.lower() != ".mp4" or concat.exists():
            raise ValidationError(
                f"--concat {args.concat!r} must be a new .mp4 file (nothing is overwritten)."
            )
    if spec.is_demo:
        say(f"note: {spec.note}")
    out = Path(args.out).expanduser()
    backend, pool = backend_for(args, settings, model)
    try:
        summary = run_batch_command(batch, out, backend)
    finally:
        if pool is not None:
            pool.close()
    status = report(summary)
    if args.concat and summary.videos():
        from studio.workflows.batch.concat import concat_batch

        video, sidecar = concat_batch(summary, args.concat)
        print(f"wrote {video} and {sidecar}")
    return status
