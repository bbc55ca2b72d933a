"""``python -m studio render``: one video from a start image, with a LoRA stack and settings.

``--lora REPO_OR_FILE[:HIGH[:LOW]]`` takes a ``.safetensors`` file or a Hub repo (``owner/name``, or
``owner/name/file.safetensors``): the file that fits the experts with a non-zero weight is picked, pinned and
downloaded (:mod:`studio.hub.resolve`).

Writes OUT.mp4, OUT.json (the record) and OUT.start.png; never overwrites. A cancelled render
(Ctrl-C) exits with 130 and writes nothing.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from studio.cli.common import parse_lora_arg, parse_lora_schedules
from studio.engine.memory import MODES, PRECISIONS, MemoryConfig
from studio.errors import ValidationError


def add_parser(sub) -> None:
    p = sub.add_parser("render", help="render one video from a start image")
    p.set_defaults(run=cmd_render)
    p.add_argument("--image", required=True, help="start image (PNG, JPEG, WebP, ...)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default=None, help="negative prompt (default: the model's)")
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a folder")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="REPO_OR_FILE[:HIGH[:LOW]]",
        help="a LoRA file or Hub repo (owner/name) with its high-noise and low-noise weight or schedule "
        "(e.g. style.safetensors:1>0:0.8@0-50%%) "
        "(repeatable; 0 = not on that expert)",
    )
    p.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p.add_argument("--preset", default=None, help="a preset file (stack and settings)")
    p.add_argument("--frames", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--guidance", type=float, help="guidance of the high-noise expert (CFG on when > 1)")
    p.add_argument("--guidance-low", type=float, help="guidance of the low-noise expert")
    p.add_argument("--shift", type=float)
    p.add_argument(
        "--high-steps",
        type=int,
        default=None,
        help="run the first K steps on the high-noise expert (default: the model's boundary)",
    )
    p.add_argument("--fps", type=int)
    p.add_argument("--fuse", action="store_true", help="fuse the LoRAs into the weights (faster steps)")
    p.add_argument("--mode", choices=MODES, default="auto", help="memory mode (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="storage of the experts' weights")
    p.add_argument(
        "--dtype",
        default=None,
        help="load the model in float32, bfloat16 or float16 (default: bfloat16 on a GPU, float32 on the CPU)",
    )
    p.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (lower peak)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compiled mode: torch.compile the experts' blocks (the first render compiles; LoRA changes never "
        "recompile, a new size or frame count recompiles once)",
    )
    p.add_argument(
        "--compile-lora-rank",
        type=int,
        default=128,
        help="LoRA rows per expert in compiled mode (default 128; a bigger stack grows it, recompiling once)",
    )
    p.add_argument("--force", action="store_true", help="render even when the VRAM estimate exceeds the GPU")
    p.add_argument("--out", required=True, help="the MP4 to write (OUT.json and OUT.start.png go beside it)")


def _settings_for(args, spec, preset):
    from studio.stack.schema import RenderSettings, build

    values = spec.defaults.settings_values()
    if preset is not None:
        values.update(preset.settings)
    flags = {
        "prompt": args.prompt, "negative_prompt": args.negative, "width": args.width, "height": args.height,
        "frames": args.frames, "steps": args.steps, "seed": args.seed, "guidance": args.guidance,
        "guidance_low": args.guidance_low, "shift": args.shift, "fps": args.fps, "high_steps": args.high_steps,
    }  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    return build(RenderSettings, "render settings", **values)


def _stack_for(args, preset):
    from studio.errors import LoraFileError
    from studio.hub.resolve import parse_repo_path
    from studio.stack import schedule as S
    from studio.stack.schema import Stack, StackEntry

    entries = list(preset.stack.entries) if preset is not None else []
    for text in args.lora:
        path, high, low = parse_lora_schedules(text)
        if not S.can_apply(high) and not S.can_apply(low):
            continue
        weights = {
            "weight_high": S.peak(high) if S.can_apply(high) else 0.0,
            "weight_low": S.peak(low) if S.can_apply(low) else 0.0,
            "schedule_high": None if S.is_constant(high) else S.text(high),
            "schedule_low": None if S.is_constant(low) else S.text(low),
        }
        if path.is_file():
            entries.append(StackEntry.single(path.resolve(), **weights))
            continue
        try:
            repo_path = parse_repo_path(str(path))
        except LoraFileError as exc:
            raise ValidationError(f"--lora {text!r}: {exc}") from None
        if repo_path is None:
            raise ValidationError(
                f"--lora {text!r}: the file {path} does not exist (and it is not a Hub repo, owner/name)."
            )
        name = repo_path.file or repo_path.repo.split("/")[1]
        entries.append(
            StackEntry.single(str(path), **weights, name=Path(name).stem if repo_path.file else name)
        )
    return Stack(entries=entries)


def cmd_render(args) -> int:
    from studio.engine.manager import CancelToken, PipelineManager, RenderRequest
    from studio.media.images import load_start_image
    from studio.outputs.render_files import save_render
    from studio.service import Studio
    from studio.settings import Settings
    from studio.vram.nvml import read_gpus
    from studio.workflows.presets.schema import load_preset

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".mp4":
        raise ValidationError(f"--out {args.out!r} must end in .mp4.")
    for path in (out, out.with_suffix(".json"), out.with_suffix(".start.png")):
        if path.exists():
            raise ValidationError(
                f"{path} already exists; choose another --out (nothing is ever overwritten)."
            )
    preset = load_preset(args.preset) if args.preset else None
    model = args.model or (preset.model if preset else None)
    lora_dirs = [Path(p).expanduser() for p in args.lora_dir]
    lora_dirs += [p.parent for p in (parse_lora_arg(t)[0] for t in args.lora) if p.is_file()]
    if args.preset:
        lora_dirs.append(Path(args.preset).expanduser().resolve().parent)
    settings = Settings.from_env(model=model, dtype=args.dtype)
    settings = settings.with_(lora_dirs=[*settings.lora_dirs, *lora_dirs])
    image = load_start_image(Path(args.image).expanduser())
    stack = _stack_for(args, preset)

    memory = MemoryConfig(
        mode=args.mode,
        precision=args.precision,
        vae_tiling=args.vae_tiling,
        compile=args.compile,
        compile_lora_rank=args.compile_lora_rank,
    )
    manager = PipelineManager(settings, memory=memory)
    spec = manager.load_model(model)
    studio = Studio(settings, manager)
    stack, notes = studio.resolve_stack(stack)  # Hub repos named as LoRA paths: picked, pinned, downloaded
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    render_settings = _settings_for(args, spec, preset)
    if spec.is_demo:
        print(f"note: {spec.note}", file=sys.stderr)
    if not args.force:
        gpus = read_gpus()
        if gpus:
            studio.check_fits(
                render_settings, stack, memory, gpus[0].total_bytes, gpus[0].name, fuse=args.fuse
            )

    token = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())

    def progress(event):
        print(f"step {event.step}/{event.total} ({event.expert}-noise expert)", file=sys.stderr, flush=True)

    try:
        request = RenderRequest(image=image, settings=render_settings, stack=stack, fuse=args.fuse)
        result = manager.render(request, progress=progress, cancel=token)
        line = studio.doctor_line(render_settings, stack, memory, fuse=args.fuse)
        saved = save_render(request, result, video_path=out, doctor=line)
    finally:
        signal.signal(signal.SIGINT, previous)
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"wrote {saved.video} ({render_settings.frames} frames, {result.timings['total_s']:.1f} s)")
    print(f"wrote {saved.sidecar}")
    return 0
