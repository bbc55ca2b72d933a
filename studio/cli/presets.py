"""``python -m studio presets list [--json]``, ``presets show NAME|FILE [--json]``,
``presets import FILE [--name NAME] [--overwrite] [--steps N] [--model NAME]``, ``presets export NAME --out FILE [--format guide]``.

Importing the guide's LoRA list resolves its Hub repo paths (``lightx2v/Wan2.2-Distill-Loras``) to the
pinned file that fits each entry (see :mod:`studio.hub.resolve`); ``--format guide`` exports that list form.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRESET_ACTIONS = ("list", "show", "import", "export")


def _store(args):
    from studio.settings import Settings
    from studio.workflows.presets.store import PresetStore

    settings = Settings.from_env()
    extra = [Path(p).expanduser() for p in getattr(args, "lora_dir", None) or []]
    if extra:
        settings = settings.with_(lora_dirs=[*settings.lora_dirs, *extra])
    return PresetStore.for_settings(settings, user_dir=getattr(args, "presets_dir", None))


def _wan2gp_run(args):
    """How Wan2GP's per-step lists are laid out: ``--steps`` (default: the model's) and the model's split."""
    from studio.engine.split import expert_split, folder_scheduler_config
    from studio.models.registry import default_model_name, pipeline_source, resolve_model
    from studio.settings import Settings
    from studio.workflows.presets.lset import RunSteps

    settings = Settings.from_env()
    spec = resolve_model(args.model or default_model_name(settings))

    def high_steps(count: int, shift: float | None) -> int:
        config = folder_scheduler_config(pipeline_source(spec, settings))
        two = spec.experts == 2 and spec.boundary_ratio is not None
        split = expert_split(
            config,
            steps=count,
            shift=shift or spec.defaults.shift,
            boundary_ratio=spec.boundary_ratio if two else None,
        )
        return split.high_count

    return RunSteps(args.steps or spec.defaults.steps, high_steps)


def add_parser(subparsers) -> None:
    """Add the ``presets`` command (list, show, import, export)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--presets-dir", default=None, help="the user presets folder (default: $STUDIO_PRESETS)"
    )
    common.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p = subparsers.add_parser("presets", help="list, show, import or export LoRA stack presets")
    actions = p.add_subparsers(dest="presets_command", required=True, parser_class=type(p))

    def action(name: str, text: str):
        return actions.add_parser(name, help=text, parents=[common])

    ls = action("list", "the shipped and user presets")
    ls.add_argument("--json", action="store_true", help="print JSON: each preset's name, file and entries")
    show = action("show", "one preset (by name, or a preset file)")
    show.add_argument("preset", help="a preset name or a .json file")
    show.add_argument("--json", action="store_true", help="print the preset file's JSON")
    imp = action(
        "import", "add a preset file (our schema, the guide's LoRA list, a sidecar or a Wan2GP .lset)"
    )
    imp.add_argument(
        "file", help="a preset .json, a LoRA list .json, a render's .json sidecar or a Wan2GP .lset"
    )
    imp.add_argument(
        "--steps", type=int, default=None, help="Wan2GP per-step lists: the step count to lay them out for"
    )
    imp.add_argument(
        "--model", default=None, help="Wan2GP per-phase lists: the model whose expert split they follow"
    )
    imp.add_argument("--name", default=None, help="the name to give it (default: its own, or the file name)")
    imp.add_argument("--overwrite", action="store_true", help="replace a user preset of the same name")
    exp = action("export", "write a preset to a file")
    exp.add_argument("preset", help="the preset name")
    exp.add_argument("--out", required=True, help="the .json file (or folder) to write")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing file")
    exp.add_argument(
        "--format",
        choices=("preset", "guide"),
        default="preset",
        help="preset: the studio's schema (default); guide: the guide's list of path/name/weight/applies_to",
    )
    p.set_defaults(run=cmd_presets)


def _print_entries(entries: list[dict]) -> None:
    for entry in entries:
        if entry["slot"]:
            where = "slot: choose a LoRA for this slot"
        else:
            files = {entry["high"], entry["low"]} - {None}
            where = " + ".join(sorted(files)) if entry["high"] != entry["low"] else entry["high"]
        print(f"    - {entry['name']} ({entry['weight_high']:g} / {entry['weight_low']:g}) {where}")


def cmd_presets(args) -> int:
    from studio.workflows.presets.store import entry_summary

    store = _store(args)
    action = args.presets_command
    if action == "list":
        infos = store.list()
        if args.json:
            print(json.dumps([info.to_json() for info in infos], indent=2, ensure_ascii=False))
            return 0
        if not infos:
            print("no presets")
        for info in infos:
            if info.error:
                print(f"{info.file.name}: broken: {info.error}")
                continue
            kind = "shipped" if info.shipped else "user"
            print(f"{info.name}  [{kind}, {info.file.name}]")
        return 0
    if action == "show":
        preset = store.load(args.preset) if not Path(args.preset).is_file() else store.load_file(args.preset)
        if args.json:
            print(preset.to_json(), end="")
            return 0
        print(preset.name)
        if preset.description:
            print(f"  {preset.description}")
        if preset.model:
            print(f"  model: {preset.model}")
        print("  entries (weights high / low):")
        _print_entries([entry_summary(e) for e in preset.entries])
        if len(preset.settings):
            values = ", ".join(f"{k} {v}" for k, v in preset.settings.values_set().items())
            print(f"  settings: {values}")
        return 0
    if action == "import":
        result = store.import_file(args.file, name=args.name, overwrite=args.overwrite, run=_wan2gp_run(args))
        print(f"imported {result.preset.name!r} ({result.format}) into {store.user_dir}")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        for slot in result.preset.slots:
            print(f"note: {slot.name}: {slot.message}", file=sys.stderr)
        return 0
    if action == "export":
        path = store.export(args.preset, args.out, overwrite=args.overwrite, format=args.format)
        print(f"wrote {path}")
        if args.format == "guide":
            from studio.workflows.presets.formats import to_guide_list

            for note in to_guide_list(store.load(args.preset))[1]:
                print(f"note: {note}", file=sys.stderr)
        return 0
    raise AssertionError(action)
