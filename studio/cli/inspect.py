"""``python -m studio inspect FILE... [--json] [--model NAME|FOLDER]``: what a LoRA file is.

For each file it prints what the header says (layout, base model, rank/alpha, module
kinds, blocks, expert hint, trigger words, size, sha256) as readable text, or with
``--json`` one JSON document: a list with one object per file.

With ``--model`` it also says whether the LoRA fits that model. When the model's
transformer config is on this machine (the demo model, a local folder, or a
downloaded Hub model), the real match runs: the file is read and converted as for
loading and matched against the transformer's layers (built from its config on the
``meta`` device, so no weights are loaded). When a registry model's weights are not
here, the header-only check (:func:`studio.loras.compat.check_compat`) answers from
the model's known config.

A file that cannot be read, or that would change nothing on ``--model``, prints one
line ``error: FILE: sentence`` on stderr (after the others are printed) and the
command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.cli.common import EXIT_OK, EXIT_USER_ERROR


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "inspect",
        help="show what LoRA files are (from their headers) and whether they fit a model",
        description="Show what LoRA files are, read from their headers, and optionally whether they fit a model.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a .safetensors LoRA file (several allowed)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON document (a list, one object per file)"
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME|FOLDER",
        help="also check each LoRA against this model: demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a folder",
    )
    p.add_argument(
        "--no-hash", action="store_true", help="skip the sha256 (computing it reads the whole file)"
    )
    p.set_defaults(run=cmd_inspect)
    return p


# ---------------------------------------------------------------------------
# The model to check against
# ---------------------------------------------------------------------------


@dataclass
class _Target:
    """What ``--model`` resolved to: a transformer skeleton (real match) or a known config (header check)."""

    name: str
    config: dict[str, Any]
    transformer: Any = None  # a WanTransformer3DModel on the meta device, or None

    @property
    def check(self) -> str:
        return "match" if self.transformer is not None else "header"


def _short_label(label: str) -> str:
    return label.split(" (")[0]


def _target(model: str, settings) -> _Target:
    from studio.errors import ModelError
    from studio.loras.compat import known_transformer_config
    from studio.models.registry import local_weights, pipeline_source, resolve_model

    spec = resolve_model(model)
    # the demo model is built on first use; other models are only looked up on disk
    demo = spec.is_demo and spec.folder is None
    folder = pipeline_source(spec, settings) if demo else local_weights(spec)
    name = "the demo model" if spec.is_demo else _short_label(spec.label)
    if folder is not None and (folder / "transformer" / "config.json").is_file():
        return _skeleton(folder, name)
    config = known_transformer_config(spec.name)
    if config is None:
        raise ModelError(
            f"{spec.label} has no transformer/config.json on this machine, so the studio cannot check LoRAs "
            "against it; give the folder that holds model_index.json and transformer/."
        )
    return _Target(name=name, config=config)


def _skeleton(folder: Path, name: str) -> _Target:
    """The transformer of ``folder`` built from its config on the meta device (its layers, no weights)."""
    import torch
    from diffusers import WanTransformer3DModel

    from studio.errors import ModelError

    try:
        config = dict(WanTransformer3DModel.load_config(folder, subfolder="transformer"))
        with torch.device("meta"):
            transformer = WanTransformer3DModel.from_config(config)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"The transformer config in {folder} cannot be used ({type(exc).__name__}: {str(exc)[:200]}); "
            "check that the folder holds a diffusers Wan pipeline."
        ) from None
    return _Target(name=name, config=config, transformer=transformer)


# ---------------------------------------------------------------------------
# Text output
# ---------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit} ({n:,} bytes)"
    return f"{n} bytes"


def _number(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


_TRAINING_ROWS = (
    ("ss_network_module", "network"),
    ("ss_base_model_version", "trained on"),
    ("ss_steps", "steps"),
    ("ss_learning_rate", "learning rate"),
)


def _info_lines(info) -> list[tuple[str, str]]:
    from studio.loras.compat import block_ranges
    from studio.loras.keys import describe_dim

    rows: list[tuple[str, str]] = [("path", str(Path(info.path).resolve())), ("size", _size(info.file_size))]
    rows.append(("sha256", info.sha256 or "(not computed)"))
    layout = info.layout_label + (f", keys prefixed {info.key_prefix!r}" if info.key_prefix else "")
    rows.append(("layout", layout))
    base = describe_dim(info.model_dim, image_attention=info.image_attention) if info.model_dim else "unknown"
    if info.task:
        base += f", {info.task.upper()}"
    rows.append(("base model", base))
    rank = _number(info.rank) + (f" (also {', '.join(map(str, info.ranks))})" if len(info.ranks) > 1 else "")
    alpha = "none (scale 1)" if info.alpha is None else _number(info.alpha)
    rows.append(("rank / alpha", f"{rank} / {alpha}"))
    kinds = ", ".join(info.module_kinds) or "none"
    rows.append(("modules", f"{info.num_modules} ({kinds})"))
    if info.num_blocks:
        rows.append(("blocks", f"{info.num_blocks} ({block_ranges(sorted(info.block_modules) or [])})"))
    else:
        rows.append(("blocks", "none"))
    if info.expert_hint:
        expert = f"{info.expert_hint}-noise (from the {info.expert_hint_source})"
    else:
        expert = "not stated (use it on both experts, or choose)"
    if info.pair_file:
        expert += f"; its other half: {info.pair_file}"
    rows.append(("expert", expert))
    rows.append(("trigger words", ", ".join(info.trigger_words) or "none"))
    if info.title:
        rows.append(("title", info.title))
    if info.tags:
        rows.append(("tags", ", ".join(info.tags[:10])))
    rows.append(("dtypes", ", ".join(info.dtypes) or "none"))
    if info.has_diff_b:
        rows.append(
            ("biases", "diff_b on some layers only" if info.diff_b_partial else "diff_b on its layers")
        )
    for key, label in _TRAINING_ROWS:
        if key in info.training:
            rows.append((label, info.training[key]))
    rows.extend(("note", note) for note in info.notes)
    return rows


def _skip_summary(report) -> list[str]:
    """One line per distinct reason a module does not land, with how many modules it hits."""
    from collections import Counter

    modules: dict[str, str] = {}
    for s in report.skipped:
        modules.setdefault(s.module or s.key, s.reason)
    counts = Counter(modules.values())
    lines = [f"{n} module{'s' if n != 1 else ''}: {reason}" for reason, n in counts.most_common(5)]
    if len(counts) > 5:
        lines.append(f"… and {len(counts) - 5} more reasons")
    return lines


def _print_text(result: dict, out) -> None:
    info = result["_info"]
    print(Path(result["file"]).name if info is None else info.file_name, file=out)
    rows = _info_lines(info) if info is not None else []
    if result.get("_report") is not None:
        report = result["_report"]
        rows.append(
            (
                "match",
                f"{result['model']}: {report.percent:g}% ({report.matched_modules} of {report.total_modules} "
                "LoRA modules land)",
            )
        )
        rows.extend(("skipped", line) for line in _skip_summary(report))
        rows.extend(("load note", note) for note in result["_notes"])
    elif result["check"] == "match":
        rows.append(("match", f"{result['model']}: nothing lands (see the error below)"))
    elif result.get("_compat") is not None:
        compat = result["_compat"]
        rows.append(
            (
                "fits",
                f"{result['model']}: {compat.level} ({'about ' if compat.level == 'partial' else ''}"
                f"{compat.percent:g}%, from the header; the model's weights are not on this machine)",
            )
        )
        rows.append(("", compat.reason))
        rows.extend(("", note) for note in compat.notes)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)
    print(file=out)


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def _inspect_one(file: str, target: _Target | None, cache_dir: Path, hash_file: bool) -> dict:
    from studio.errors import LoraFileError
    from studio.loras.compat import check_compat
    from studio.loras.inspect import inspect_lora
    from studio.loras.match import prepare_lora

    result: dict[str, Any] = {
        "file": file,
        "ok": True,
        "error": None,
        "info": None,
        "model": target.name if target else None,
        "check": target.check if target else None,
        "compat": None,
        "match": None,
        "load_notes": [],
        "_info": None,
        "_report": None,
        "_compat": None,
        "_notes": [],
    }
    path = Path(file).expanduser()
    try:
        info = inspect_lora(path, cache_dir=cache_dir, hash_file=hash_file)
    except LoraFileError as exc:
        return {**result, "ok": False, "error": str(exc)}
    except OSError as exc:
        return {
            **result,
            "ok": False,
            "error": f"{path.name} cannot be read ({exc.strerror}); check the path.",
        }
    result.update(info=info.model_dump(mode="json"), _info=info)
    if target is None:
        return result
    compat = check_compat(info, target.config, model_name=target.name)
    result.update(compat=compat.model_dump(mode="json"), _compat=compat)
    if target.transformer is not None:
        try:
            prepared = prepare_lora(path, target.transformer, hash_file=False)
        except LoraFileError as exc:
            return {**result, "ok": False, "error": str(exc)}
        result.update(
            match=prepared.report.model_dump(mode="json"),
            load_notes=list(prepared.notes),
            _report=prepared.report,
            _notes=list(prepared.notes),
        )
    elif compat.level == "incompatible":
        return {**result, "ok": False, "error": compat.reason}
    return result


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run ``inspect``; returns the exit status (2 when any file is unreadable or refused)."""
    from studio.settings import Settings

    settings = Settings.from_env()
    target = _target(args.model, settings) if args.model else None
    results = [_inspect_one(f, target, settings.cache_dir, not args.no_hash) for f in args.files]

    if args.json:
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        json.dump(public, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        for r in results:
            if r["_info"] is not None:
                _print_text(r, sys.stdout)
    sys.stdout.flush()
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
    return EXIT_USER_ERROR if failed else EXIT_OK
