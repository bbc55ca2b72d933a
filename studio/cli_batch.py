"""CLI commands ``python -m studio batch`` and ``python -m studio grid`` (wired into the studio's parser).

``batch SCENES.json --out DIR [--workers N] [--concat OUT.mp4]`` renders every scene of a scene
file into DIR (MP4 + sidecar + start image per scene), printing progress per scene and
overall on stderr. Running it again renders only what is not done. Exit status: 0 when every
scene is done, 1 when some failed (each with its sentence; a re-run tries them again), 2 for a
bad scene file or another user error, 130 on Ctrl-C (finished scenes are kept).

``grid --image IMG --prompt TEXT --lora FILE[:W] ... --rows AXIS --cols AXIS --out DIR`` renders
a weight grid as a batch into DIR and writes ``DIR/grid.mp4``. An axis is ``seed=1,2,3``,
``steps=4,8`` or ``NAME[@high|@low]=0.4,0.7,1.0`` (NAME: a LoRA's name, its file stem by default).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from studio.engine.memory import MODES, PRECISIONS, MemoryConfig
from studio.errors import ValidationError

EXIT_FAILED_SCENES = 1

_SETTING_FLAGS = (
    ("--frames", int, "frames"),
    ("--steps", int, "steps"),
    ("--width", int, "width"),
    ("--height", int, "height"),
    ("--seed", int, "seed"),
    ("--guidance", float, "guidance"),
    ("--guidance-low", float, "guidance_low"),
    ("--shift", float, "shift"),
    ("--fps", int, "fps"),
)


def _add_engine_flags(p) -> None:
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a folder")
    p.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p.add_argument("--out", required=True, help="the folder to render into (created; re-running resumes)")
    p.add_argument("--workers", type=int, default=None, help="render on N Ray workers (one GPU each)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster, e.g. ray://head:10001")
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU worker")
    p.add_argument("--mode", choices=MODES, default="auto", help="memory mode (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="storage of the experts' weights")
    p.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (lower peak)")


def add_batch_parsers(sub) -> None:
    b = sub.add_parser("batch", help="render a scene file (resumable; several GPUs with --workers)")
    b.add_argument("scenes", help="the scene file (.json, kind wan-lora-studio/scenes)")
    _add_engine_flags(b)
    b.add_argument("--concat", default=None, metavar="OUT.mp4", help="also join the scenes into one MP4")
    g = sub.add_parser("grid", help="render a weight grid (two axes) and compose it into one MP4")
    g.add_argument("--image", required=True, help="start image of every cell")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative", default=None, help="negative prompt (default: the model's)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:HIGH[:LOW]]", help="a LoRA (repeatable)")
    g.add_argument("--preset", default=None, help="a preset file (stack and settings)")
    g.add_argument("--rows", required=True, metavar="AXIS", help="seed=1,2 | steps=4,8 | NAME[@high|@low]=0.4,1.0")
    g.add_argument("--cols", required=True, metavar="AXIS", help="the second axis, same forms")
    g.add_argument("--video", default=None, help="the grid MP4 (default DIR/grid.mp4)")
    for flag, kind, _ in _SETTING_FLAGS:
        g.add_argument(flag, type=kind)
    _add_engine_flags(g)


# ----------------------------------------------------------------------------- shared


def _settings(args, extra_dirs=()):
    from studio.settings import Settings

    settings = Settings.from_env(model=args.model)
    dirs = [Path(p).expanduser() for p in args.lora_dir] + list(extra_dirs)
    return settings.with_(lora_dirs=[*settings.lora_dirs, *dirs])


def _memory(args) -> MemoryConfig:
    return MemoryConfig(mode=args.mode, precision=args.precision, vae_tiling=args.vae_tiling)


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _backend(args, settings, model: str | None):
    """The in-process backend, or a Ray pool for ``--workers`` (Ray is optional: a sentence says how to get it)."""
    memory = _memory(args)
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
        on_note=lambda text: _print(f"note: {text}"),
    )
    return pool, pool


def _run(batch, out: Path, backend) -> object:
    from studio.workflows.batch.runner import BatchRunner

    runner = BatchRunner(batch, out, backend, on_event=lambda event: _print(event.line()))
    previous = signal.signal(signal.SIGINT, lambda *_: runner.cancel())
    try:
        return runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _report(summary) -> int:
    counts = summary.counts
    print(f"{counts['done']} of {len(summary.state.jobs)} scenes done, {counts['failed']} failed: {summary.out_dir}")
    for job in summary.state.jobs:
        if job.status == "failed":
            print(f"failed: {job.scene}: {job.error}")
    return 0 if summary.complete else EXIT_FAILED_SCENES


# ----------------------------------------------------------------------------- batch


def cmd_batch(args) -> int:
    from studio.models import default_model_name, resolve_model
    from studio.presets import PresetStore
    from studio.workflows.batch.scenes import load_scene_file, resolve_scenes

    path = Path(args.scenes).expanduser().resolve()
    scene_file = load_scene_file(path)
    settings = _settings(args, [path.parent])
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
        _print(f"note: {note}")
    if args.concat:
        concat = Path(args.concat).expanduser()
        if concat.suffix.lower() != ".mp4" or concat.exists():
            raise ValidationError(f"--concat {args.concat!r} must be a new .mp4 file (nothing is overwritten).")
    if spec.is_demo:
        _print(f"note: {spec.note}")
    out = Path(args.out).expanduser()
    backend, pool = _backend(args, settings, model)
    try:
        summary = _run(batch, out, backend)
    finally:
        if pool is not None:
            pool.close()
    status = _report(summary)
    if args.concat and summary.videos():
        from studio.workflows.batch.concat import concat_batch

        video, sidecar = concat_batch(summary, args.concat)
        print(f"wrote {video} and {sidecar}")
    return status


# ----------------------------------------------------------------------------- grid


def _grid_inputs(args, settings, spec):
    from studio.cli import parse_lora_arg
    from studio.presets import load_preset
    from studio.stack import RenderSettings, Stack, StackEntry, build

    preset = load_preset(args.preset, roots=settings.resolved_lora_dirs()) if args.preset else None
    entries = list(preset.stack.entries) if preset is not None else []
    for text in args.lora:
        path, high, low = parse_lora_arg(text)
        if not path.is_file():
            raise ValidationError(f"--lora {text!r}: the file {path} does not exist.")
        entries.append(StackEntry.single(path.resolve(), high, low))
    values = spec.defaults.settings_values()
    if preset is not None:
        values.update(preset.settings)
    values.update(prompt=args.prompt)
    if args.negative is not None:
        values["negative_prompt"] = args.negative
    values.update({key: getattr(args, key) for _, _, key in _SETTING_FLAGS if getattr(args, key) is not None})
    return build(RenderSettings, "render settings", **values), Stack(entries=entries)


def cmd_grid(args) -> int:
    from studio.cli import parse_lora_arg
    from studio.images import load_start_image
    from studio.models import default_model_name, resolve_model
    from studio.workflows.batch.grid import grid_batch, parse_axis, run_grid

    extra = [parse_lora_arg(t)[0].expanduser().resolve().parent for t in args.lora]
    if args.preset:
        extra.append(Path(args.preset).expanduser().resolve().parent)
    settings = _settings(args, extra)
    model = args.model or default_model_name(settings)
    spec = resolve_model(model)
    image = Path(args.image).expanduser()
    load_start_image(image)  # a bad image is refused before anything renders
    render_settings, stack = _grid_inputs(args, settings, spec)
    rows, cols = parse_axis(args.rows), parse_axis(args.cols)
    grid_batch(image, render_settings, stack, rows, cols, model=spec.name)  # a bad axis is refused before any render
    if args.video is not None and Path(args.video).expanduser().exists():
        raise ValidationError(f"--video {args.video!r} already exists; choose another name (nothing is overwritten).")
    out = Path(args.out).expanduser()
    backend, pool = _backend(args, settings, model)
    runner_events = {"on_event": lambda event: _print(event.line())}
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *_: backend.cancel())
        video, layout, summary = run_grid(
            image, render_settings, stack, rows, cols, out, backend, model=spec.name, video=args.video, **runner_events
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if pool is not None:
            pool.close()
    status = _report(summary)
    if video is not None:
        print(f"wrote {video} ({layout.rows} × {layout.cols} cells, {layout.width}×{layout.height})")
    return status


BATCH_COMMANDS = {"batch": cmd_batch, "grid": cmd_grid}
