"""``python -m studio doctor``: how strong each LoRA of a stack is, which ones fight or double up, what it costs.

    python -m studio doctor --model demo --lora style.safetensors:1:0.5 --lora speed.safetensors [--json]

loads the model (it needs the base weights' norms and its layer shapes), reads each LoRA the
way a render would, and prints per LoRA and expert the relative weight change and its flags,
every pair on the same expert with its cosine, and the cost of the stack at the render size
(``--width``/``--height``/``--frames``/``--steps``, the model's defaults otherwise). The LoRA
folders (``--lora-dir``, ``STUDIO_LORA_DIRS`` and each ``--lora``'s folder) are the library the
strengths are compared with. ``--measure`` also times one forward with and without the stack.
``--json`` prints ``{"loras": [...], "pairs": [...], "cost": {...}, ...}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from studio.cli.common import parse_lora_arg
from studio.engine.memory import MODES, PRECISIONS, MemoryConfig
from studio.errors import ValidationError


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check a LoRA stack: strength, conflicts, cost (before rendering)")
    p.set_defaults(run=cmd_doctor)
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a folder")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:HIGH[:LOW]]",
        help="a LoRA with its high-noise and low-noise weight (repeatable; 0 = not on that expert)",
    )
    p.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float, help="guidance of the high-noise expert (CFG on when > 1)")
    p.add_argument("--fuse", action="store_true", help="the render fuses the LoRAs into the weights")
    p.add_argument("--mode", choices=MODES, default="auto", help="memory mode (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="storage of the experts' weights")
    p.add_argument("--measure", action="store_true", help="also time one forward with and without the stack")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _stack(args):
    from studio.stack.schema import Stack, StackEntry

    entries = []
    for text in args.lora:
        path, high, low = parse_lora_arg(text)
        if not path.is_file():
            raise ValidationError(f"--lora {text!r}: the file {path} does not exist.")
        entries.append(StackEntry.single(path.resolve(), high, low))
    if not entries:
        raise ValidationError("name at least one LoRA with --lora FILE[:HIGH[:LOW]].")
    return Stack(entries=entries)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.3g}%"


def _bytes(n: int) -> str:
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.3g} MB"


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]


def text_report(report, settings) -> str:
    lines = [f"Stack doctor — {report.model}", ""]
    rows = [
        [f.name, f.expert, f"{f.weight:g}", _pct(f.relative_effect), _pct(f.relative_effect_at_1),
         _num(f.factor, "×{:.2g}"), _num(f.suggested_weight, "{:g}"), ", ".join(f.flags) or (f.error or "")]
        for f in report.loras
    ]  # fmt: skip
    lines += _rows(["LoRA", "expert", "weight", "effect", "at 1", "vs median", "suggested", "flags"], rows)
    medians = ", ".join(f"{r.expert} {_pct(r.median)} ({r.count} LoRAs)" for r in report.library)
    lines.append(f"library median at weight 1: {medians}")
    if report.pairs:
        lines.append("")
        rows = [
            [f"{p.a_name} + {p.b_name}", p.expert, str(p.shared_modules), _num(p.cosine, "{:+.2f}"),
             ", ".join(p.flags) + (f" (lower both ×{p.scale_both:g})" if p.scale_both else "")]
            for p in report.pairs
        ]  # fmt: skip
        lines += _rows(["pair", "expert", "shared", "cosine", "flags"], rows)
    cost = report.cost
    if cost is not None:
        lines += [
            "",
            f"Cost at {settings.width}×{settings.height}, {settings.frames} frames, {settings.steps} steps "
            f"({cost.tokens:,} tokens, CFG {'on' if cost.cfg else 'off'}{', fused' if cost.fused else ''})",
        ]
        rows = [
            [Path(c.file).name, "+".join(c.experts), _bytes(c.vram_bytes), _bytes(c.ram_bytes),
             _bytes(c.weight_bytes), f"{sum(c.unfused_flops_per_step.values()) / 1e9:.3g}",
             f"{c.fuse_flops / 1e9:.3g}"]
            for c in cost.loras
        ]  # fmt: skip
        rows.append(["total", "", _bytes(cost.vram_bytes), _bytes(cost.ram_bytes), _bytes(cost.weight_bytes),
                     f"{sum(cost.unfused_flops_per_step.values()) / 1e9:.3g}", f"{cost.fuse_flops / 1e9:.3g}"])  # fmt: skip
        header = ["file", "experts", "VRAM added", "RAM added", "weights", "GFLOP/step unfused", "fuse GFLOP"]
        lines += _rows(header, rows)
        lines.append(f"fusing pays off: {'yes' if cost.fuse_pays_off else 'no'}")
        lines += [f"note: {n}" for n in cost.notes]
        if cost.measured is not None:
            for t in cost.measured.experts:
                lines.append(
                    f"measured ({t.expert}): one forward {t.without_s * 1000:.1f} ms without, "
                    f"{t.with_s * 1000:.1f} ms with the stack ({t.overhead:+.1%}); it changes the output by "
                    f"{t.output_change:.3g} (relative)"
                )
    lines += [f"note: {n}" for n in report.notes]
    lines += ["", report.summary()]
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    from studio.engine.manager import PipelineManager
    from studio.service import Studio
    from studio.settings import Settings
    from studio.stack.schema import RenderSettings, build

    stack = _stack(args)
    lora_dirs = [Path(p).expanduser() for p in args.lora_dir]
    lora_dirs += [parse_lora_arg(t)[0].resolve().parent for t in args.lora]
    settings = Settings.from_env(model=args.model)
    settings = settings.with_(lora_dirs=[*settings.lora_dirs, *lora_dirs])
    memory = MemoryConfig(mode=args.mode, precision=args.precision)
    manager = PipelineManager(settings, memory=memory)
    spec = manager.load_model(args.model)
    studio = Studio(settings, manager)
    values = spec.defaults.settings_values()
    flags = {"width": args.width, "height": args.height, "frames": args.frames, "steps": args.steps,
             "guidance": args.guidance}  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    render_settings = build(RenderSettings, "render settings", **values)
    if spec.is_demo and not args.json:
        print(f"note: {spec.note}", file=sys.stderr)
    report = studio.doctor(render_settings, stack, memory, fuse=args.fuse, measure=args.measure)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(text_report(report, render_settings))
    return 0
