"""``python -m studio hub search|files|download``: Wan LoRAs on the Hugging Face Hub.

* ``hub search [QUERY] [--wan 2.2|2.1|any] [--task i2v|t2v|any] [--sort downloads|likes|updated]
  [--limit N] [--all] [--json]`` — repo id, author, downloads, likes, last update, Wan version and task, the
  card's summary and trigger words;
* ``hub files REPO [--revision R] [--model NAME|FOLDER|none] [--json]`` — the repo's ``.safetensors`` files
  with sizes, high/low pairs, and for each file what its header (read remotely, nothing downloaded) says:
  layout, base model, rank, expert, and whether it fits ``--model`` (default: ``$STUDIO_MODEL``, else
  ``wan2.2-i2v-a14b``);
* ``hub download REPO FILE... [--revision R]`` — into the Hugging Face cache, pinned to the commit, with a
  progress line on stderr; prints each file's local path. Files already there are not fetched again.

A token comes from ``HF_TOKEN`` (it is never printed or written). Every failure prints one line
``error: …`` and exits with status 2; Ctrl-C during a download removes the partial file and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from studio.cli.common import EXIT_CANCELLED

DEFAULT_FILES_MODEL = "wan2.2-i2v-a14b"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``hub`` (with ``search``, ``files`` and ``download``) to the studio's sub-command parsers."""
    p = subparsers.add_parser("hub", help="search, inspect and download Wan LoRAs on the Hugging Face Hub")
    actions = p.add_subparsers(dest="hub_command", required=True, parser_class=type(p))

    s = actions.add_parser("search", help="find Wan LoRA repos")
    s.add_argument("query", nargs="?", default="", help="words in the repo id (default: every Wan LoRA)")
    s.add_argument("--wan", choices=("2.2", "2.1", "any"), default="any", help="Wan version (default: any)")
    s.add_argument("--task", choices=("i2v", "t2v", "any"), default="any", help="I2V or T2V (default: any)")
    s.add_argument("--sort", choices=("downloads", "likes", "updated"), default="downloads")
    s.add_argument("--limit", type=int, default=20, help="at most this many results (1-100, default 20)")
    s.add_argument("--all", action="store_true", help="also list repos that do not look like LoRAs")
    s.add_argument("--json", action="store_true", help="print a JSON list")

    f = actions.add_parser("files", help="list a repo's LoRA files, inspected from their headers")
    f.add_argument("repo", help="owner/name")
    f.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    f.add_argument(
        "--model",
        default=None,
        metavar="NAME|FOLDER|none",
        help=f"check each file against this model (default: $STUDIO_MODEL or {DEFAULT_FILES_MODEL}; none: skip)",
    )
    f.add_argument("--json", action="store_true", help="print one JSON document")

    d = actions.add_parser("download", help="download LoRA files into the Hugging Face cache")
    d.add_argument("repo", help="owner/name")
    d.add_argument(
        "files", nargs="+", metavar="FILE", help="a .safetensors file of the repo (several allowed)"
    )
    d.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.set_defaults(run=cmd_hub)
    return p


# ---------------------------------------------------------------------------------------------------------------


def _client():
    from studio.hub.client import HubClient
    from studio.settings import Settings

    return HubClient(cache_dir=Settings.from_env().cache_dir)


def _size(n: int | None) -> str:
    if n is None:
        return "? B"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _model_config(name: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(transformer config, model name) for ``--model``; (None, None) for ``none``."""
    from studio.errors import ModelError
    from studio.loras.compat import known_transformer_config
    from studio.models.registry import REGISTRY

    name = name or os.environ.get("STUDIO_MODEL") or DEFAULT_FILES_MODEL
    if name.lower() in ("none", "-"):
        return None, None
    config = known_transformer_config(name)
    if config is not None:
        spec = REGISTRY.get(name)
        label = "the demo model" if name == "demo" else (spec.label.split(" (")[0] if spec else name)
        return config, label
    folder = Path(name).expanduser()
    config_file = folder / "transformer" / "config.json"
    if config_file.is_file():
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"{config_file} cannot be read ({type(exc).__name__}); check the model folder."
            ) from None
        if isinstance(data, dict):
            return data, folder.name
    raise ModelError(
        f"Unknown model {name!r} for --model: choose {', '.join(REGISTRY)}, a diffusers Wan folder "
        "(with transformer/config.json), or none."
    )


def _search(args) -> int:
    results = _client().search(
        args.query,
        wan_version=None if args.wan == "any" else args.wan,
        task=None if args.task == "any" else args.task,
        sort=args.sort,
        limit=args.limit,
        lora_only=not args.all,
    )
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in results], indent=2, ensure_ascii=False))
        return 0
    if not results:
        print("no Wan LoRAs found")
        return 0
    for r in results:
        what = ", ".join(
            x
            for x in (
                "/".join(f"Wan{v}" for v in r.wan_versions),
                "/".join(t.upper() for t in r.tasks),
                "gated" if r.gated else "",
                "private" if r.private else "",
            )
            if x
        )
        updated = (r.last_modified or "?")[:10]
        print(
            f"{r.repo_id}  by {r.author or '?'}  downloads {r.downloads:,}  likes {r.likes:,}  updated {updated}"
            + (f"  [{what}]" if what else "")
        )
        if r.summary:
            print(f"    {r.summary}")
        if r.trigger_words:
            print(f"    trigger words: {', '.join(r.trigger_words)}")
    return 0


def _file_line(f) -> str:
    from studio.loras.keys import describe_dim

    if f.error:
        return f"{f.file}  {_size(f.size)}  cannot be inspected: {f.error}"
    info = f.info
    if info is None:
        return f"{f.file}  {_size(f.size)}  (header not read)"
    base = (
        describe_dim(info.model_dim, image_attention=info.image_attention)
        if info.model_dim
        else "unknown model"
    )
    rank = "?" if info.rank is None else str(info.rank)
    expert = f"{info.expert_hint}-noise" if info.expert_hint else "both experts"
    parts = [f"{f.file}  {_size(f.size)}", info.layout_label, base, f"rank {rank}", expert]
    if f.compat is not None:
        parts.append(f"{f.compat.level} ({f.compat.percent:.0f}%)")
    if f.downloaded:
        parts.append("downloaded")
    return "  ".join(parts[:1]) + "  " + ", ".join(parts[1:])


def _files(args) -> int:
    config, model_name = _model_config(args.model)
    listing = _client().files(args.repo, args.revision, config, model_name=model_name)
    if args.json:
        print(listing.model_dump_json(indent=2))
        return 0
    print(
        f"{listing.repo} @ {listing.revision} ({listing.sha})"
        + (f", checked against {model_name}" if model_name else "")
    )
    by_name = {f.file: f for f in listing.files}
    if not listing.items and not listing.not_inspected:
        print("  no .safetensors files")
    for item in listing.items:
        if item.kind == "pair":
            print(f"- {item.label}: high/low pair, {_size(item.size)}")
            for role, name in (("high", item.high_file), ("low", item.low_file)):
                print(f"    {role}: {_file_line(by_name[str(name)])}")
        else:
            print(f"- {_file_line(by_name[str(item.file)])}")
        if item.compat is not None and item.compat.level != "compatible":
            print(f"    {item.compat.reason}")
    for name in listing.not_inspected:
        print(f"- {name}  {_size(by_name[name].size)}  (header not read)")
    for note in listing.notes:
        print(f"note: {note}")
    return 0


def _download(args) -> int:
    shown = {"last": -1}

    def progress(done: int, total: int) -> None:
        percent = 100 if total <= 0 else int(100 * done / total)
        if percent != shown["last"]:
            shown["last"] = percent
            print(f"\r{_size(done)} / {_size(total)} ({percent}%)", end="", file=sys.stderr, flush=True)

    try:
        paths = _client().download(args.repo, args.files, args.revision, progress)
    except KeyboardInterrupt:  # huggingface_hub deletes the partial file on the way out
        print("", file=sys.stderr)
        print("cancelled: the download was stopped; no partial file was kept.", file=sys.stderr)
        return EXIT_CANCELLED
    print("", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


HUB_COMMANDS = {"search": _search, "files": _files, "download": _download}


def cmd_hub(args) -> int:
    """Run ``hub search|files|download`` (StudioErrors propagate to the caller's ``error:`` line)."""
    return HUB_COMMANDS[args.hub_command](args)
