"""``python -m studio grid --image IMG --prompt TEXT --lora FILE[:W] ... --rows AXIS --cols AXIS --out DIR``.

Renders a weight grid as a resumable batch into DIR and writes ``DIR/grid.mp4`` (rows × columns,
labelled). An axis is ``seed=1,2,3``, ``steps=4,8`` or ``NAME[@high|@low]=0.4,0.7,1.0`` (NAME: a
LoRA's name, its file stem by default). Exit statuses as for ``batch``.
"""

from __future__ import annotations

import signal
from pathlib import Path

from studio.cli.batch import add_engine_flags, backend_for, report, say, studio_settings
from studio.errors import ValidationError

SETTING_FLAGS = (
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


def add_parser(subparsers) -> None:
    g = subparsers.add_parser("grid", help="render a weight grid (two axes) and compose it into one MP4")
    g.add_argument("--image", required=True, help="start image of every cell")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative", default=None, help="negative prompt (default: the model's)")
    g.add_argument(
        "--lora", action="append", default=[], metavar="FILE[:HIGH[:LOW]]", help="a LoRA (repeatable)"
    )
    g.add_argument("--preset", default=None, help="a preset file (stack and settings)")
    g.add_argument(
        "--rows", required=True, metavar="AXIS", help="seed=1,2 | steps=4,8 | NAME[@high|@low]=0.4,1.0"
    )
    g.add_argument("--cols", required=True, metavar="AXIS", help="the second axis, same forms")
    g.add_argument("--video", default=None, help="the grid MP4 (default DIR/grid.mp4)")
    for flag, kind, _ in SETTING_FLAGS:
        g.add_argument(flag, type=kind)
    add_engine_flags(g)
    g.set_defaults(run=cmd_grid)


def _grid_inputs(args, settings, spec):
    from studio.cli.common import parse_lora_arg
    from studio.stack.schema import RenderSettings, Stack, StackEntry, build
    from studio.workflows.presets.schema import load_preset

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
    values.update({key: getattr(args, key) for _, _, key in SETTING_FLAGS if getattr(args, key) is not None})
    return build(RenderSettings, "render settings", **values), Stack(entries=entries)


def cmd_grid(args) -> int:
    from studio.cli.common import parse_lora_arg
    from studio.media.images import load_start_image
    from studio.models.registry import default_model_name, resolve_model
    from studio.workflows.batch.grid import grid_batch, parse_axis, run_grid

    extra = [parse_lora_arg(t)[0].expanduser().resolve().parent for t in args.lora]
    if args.preset:
        extra.append(Path(args.preset).expanduser().resolve().parent)
    settings = studio_settings(args, extra)
    model = args.model or default_model_name(settings)
    spec = resolve_model(model)
    image = Path(args.image).expanduser()
    load_start_image(image)  # a bad image is refused before anything renders
    render_settings, stack = _grid_inputs(args, settings, spec)
    rows, cols = parse_axis(args.rows), parse_axis(args.cols)
    grid_batch(
        image, render_settings, stack, rows, cols, model=spec.name
    )  # a bad axis is refused before any render
    if args.video is not None and Path(args.video).expanduser().exists():
        raise ValidationError(
            f"--video {args.video!r} already exists; choose another name (nothing is overwritten)."
        )
    out = Path(args.out).expanduser()
    backend, pool = backend_for(args, settings, model)
    runner_events = {"on_event": lambda event: say(event.line())}
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *_: backend.cancel())
        video, layout, summary = run_grid(
            image,
            render_settings,
            stack,
            rows,
            cols,
            out,
            backend,
            model=spec.name,
            video=args.video,
            **runner_events,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if pool is not None:
            pool.close()
    status = report(summary)
    if video is not None:
        print(f"wrote {video} ({layout.rows} × {layout.cols} cells, {layout.width}×{layout.height})")
    return status
