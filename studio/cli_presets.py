"""CLI commands for presets and comparisons (wired into :mod:`studio.cli`).

``python -m studio presets list [--json]``, ``presets show NAME|FILE [--json]``,
``presets import FILE [--name NAME] [--overwrite]``, ``presets export NAME --out FILE``
and ``python -m studio compare A.mp4 B.mp4 [...] --out SIDE.mp4 [--label L ...]``.
Errors print one line starting with ``error:`` and exit with status 2 (the studio's
``main`` does that for every ``StudioError``; :func:`main` here does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studio.errors import StudioError

EXIT_USER_ERROR = 2
PRESET_ACTIONS = ("list", "show", "import", "export")


def _store(args):
    from studio.presets import PresetStore
    from studio.settings import Settings

    settings = Settings.from_env()
    extra = [Path(p).expanduser() for p in getattr(args, "lora_dir", None) or []]
    if extra:
        settings = settings.with_(lora_dirs=[*settings.lora_dirs, *extra])
    return PresetStore.for_settings(settings, user_dir=getattr(args, "presets_dir", None))


def add_presets_parsers(subparsers) -> None:
    """Add the ``presets`` and ``compare`` commands to the studio's sub-command parsers."""
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
    imp = action("import", "add a preset file (our schema or the guide's LoRA list)")
    imp.add_argument("file", help="a preset .json, a LoRA list .json, or a render's .json sidecar")
    imp.add_argument("--name", default=None, help="the name to give it (default: its own, or the file name)")
    imp.add_argument("--overwrite", action="store_true", help="replace a user preset of the same name")
    exp = action("export", "write a preset to a file")
    exp.add_argument("preset", help="the preset name")
    exp.add_argument("--out", required=True, help="the .json file (or folder) to write")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing file")

    c = subparsers.add_parser("compare", help="put renders side by side in one labelled MP4")
    c.add_argument("videos", nargs="+", help="two to eight MP4s")
    c.add_argument("--out", required=True, help="the side-by-side MP4 to write")
    c.add_argument(
        "--label", action="append", default=[], help="a label per video, in order (default: what differs)"
    )
    c.add_argument("--height", type=int, default=None, help="panel height in pixels (default: the tallest)")


def _print_entries(entries: list[dict]) -> None:
    for entry in entries:
        if entry["slot"]:
            where = "slot: choose a LoRA for this slot"
        else:
            files = {entry["high"], entry["low"]} - {None}
            where = " + ".join(sorted(files)) if entry["high"] != entry["low"] else entry["high"]
        print(f"    - {entry['name']} ({entry['weight_high']:g} / {entry['weight_low']:g}) {where}")


def cmd_presets(args) -> int:
    from studio.presets import entry_summary

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
        result = store.import_file(args.file, name=args.name, overwrite=args.overwrite)
        print(f"imported {result.preset.name!r} ({result.format}) into {store.user_dir}")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        for slot in result.preset.slots:
            print(f"note: {slot.name}: {slot.message}", file=sys.stderr)
        return 0
    if action == "export":
        path = store.export(args.preset, args.out, overwrite=args.overwrite)
        print(f"wrote {path}")
        return 0
    raise AssertionError(action)


def cmd_compare(args) -> int:
    from studio.compare import default_labels, side_by_side
    from studio.errors import ValidationError
    from studio.history import load_record

    videos = [Path(v).expanduser() for v in args.videos]
    for video in videos:
        if not video.is_file():
            raise ValidationError(f"The video {video} was not found.")
    labels = list(args.label)
    if labels and len(labels) != len(videos):
        raise ValidationError(f"Give one --label per video ({len(videos)} videos, {len(labels)} labels).")
    if not labels:
        try:
            records = [load_record(v)[0] for v in videos]
        except StudioError:
            labels = [v.stem for v in videos]
        else:
            labels = default_labels(records, [v.stem for v in videos])
    out = side_by_side(videos, labels, Path(args.out), height=args.height)
    print(f"wrote {out}")
    return 0


PRESET_COMMANDS = {"presets": cmd_presets, "compare": cmd_compare}
