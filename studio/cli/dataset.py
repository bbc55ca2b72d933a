"""``python -m studio dataset check DIR``: what a training dataset holds and what the trainer will make of it.

Prints, per clip or image: frames, frame rate, size, the caption's source, problems (a
sentence each: unreadable, no or empty caption, too small) and the cut it trains on (4k+1
frames at the model's frame rate, a bucket size in multiples of 16). ``--json`` prints the
same report as JSON. Exits with 2 when no item is usable (training would refuse it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from studio.cli.common import EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="check a training dataset (clips/images with captions)")
    actions = p.add_subparsers(dest="dataset_command", required=True, parser_class=type(p))
    check = actions.add_parser("check", help="report clips, frames, sizes, captions and the training cut")
    check.set_defaults(run=cmd_check)
    check.add_argument("folder", help="a folder of .mp4/.webm/.mov clips and/or images with .txt captions")
    check.add_argument(
        "--model", default=None, help="the model to train (its frame rate and size); default demo/A14B"
    )
    check.add_argument(
        "--frames", type=int, help="frames per clip to train on (4k+1; default: the model's, ≤ 33)"
    )
    check.add_argument("--width", type=int, help="training width (default: the model's)")
    check.add_argument("--height", type=int, help="training height (default: the model's)")
    check.add_argument("--trigger", default="", help="a trigger word added to captions that lack it")
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def report_for(args):
    from studio.models.registry import default_model_name, resolve_model
    from studio.settings import Settings
    from studio.training.dataset import check_dataset
    from studio.training.options import model_defaults

    settings = Settings.from_env(model=args.model)
    spec = resolve_model(default_model_name(settings))
    size = model_defaults(spec)
    return check_dataset(
        Path(args.folder),
        frames=args.frames or size["frames"],
        width=args.width or size["width"],
        height=args.height or size["height"],
        fps=spec.defaults.fps,
        trigger=args.trigger,
    )


def cmd_check(args) -> int:
    from studio.stack.schema import parse_model
    from studio.training.options import TrainOptions

    given = {k: getattr(args, k) for k in ("frames", "width", "height") if getattr(args, k)}
    parse_model(TrainOptions, {"name": "check", **given}, "dataset settings")  # the trainer's own checks
    report = report_for(args)
    if args.json:
        print(json.dumps({**report.model_dump(mode="json"), "buckets": report.buckets()}, indent=2))
    else:
        print(report.text())
    report.require_usable()  # no usable item: one error line, exit 2
    if not args.json:
        print(f"{len(report.usable)} item(s) ready to train.", file=sys.stderr)
    return EXIT_OK
