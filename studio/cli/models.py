"""``python -m studio demo-model`` (build the offline demo model, print its folder) and
``python -m studio download MODEL`` (a model's weights from the Hugging Face Hub)."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    sub.add_parser(
        "demo-model", help="build the offline demo model if needed and print its folder"
    ).set_defaults(run=cmd_demo_model)
    d = sub.add_parser("download", help="download a model's weights from the Hugging Face Hub")
    d.add_argument("model", help="wan2.2-i2v-a14b or wan2.2-ti2v-5b")
    d.set_defaults(run=cmd_download)


def cmd_demo_model(args) -> int:
    from studio.models.demo import ensure_demo_model
    from studio.settings import Settings

    print(ensure_demo_model(Settings.from_env().cache_dir).resolve())
    return 0


def cmd_download(args) -> int:
    from studio.hub.models import download_model
    from studio.models.registry import resolve_model

    spec = resolve_model(args.model)

    def progress(done: int, total: int) -> None:
        print(f"\r{done / 1e9:.2f} / {total / 1e9:.2f} GB", end="", file=sys.stderr, flush=True)

    path = download_model(spec, progress)
    print(f"\n{path}")
    return 0
