"""``python -m studio COMMAND``: the one parser of the command line and its entry point.

Each command lives in its own module of :mod:`studio.cli` with an ``add_parser(subparsers)`` that
registers it and sets ``run`` (the function that runs it). Bad arguments and user errors print one
line starting with ``error:`` and exit with status 2; a cancelled render (Ctrl-C) exits with 130.
"""

from __future__ import annotations

import sys

from studio.cli import (
    batch,
    compare,
    dataset,
    doctor,
    grid,
    hub,
    inspect,
    models,
    presets,
    render,
    train,
    vram,
)
from studio.cli.common import EXIT_CANCELLED, EXIT_USER_ERROR, Parser
from studio.errors import RenderCancelled, StudioError

COMMAND_MODULES = (render, presets, compare, models, inspect, hub, vram, doctor, dataset, train, batch, grid)


def build_parser() -> Parser:
    parser = Parser(prog="studio", description="Wan LoRA Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RenderCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
