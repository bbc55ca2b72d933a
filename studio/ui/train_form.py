"""The Train tab's logic without widgets: settings from the form, dataset folders, the estimate line,
the loss plot's table and the sample choices. The tab (:mod:`studio.ui.train_tab`) only wires these.
"""

from __future__ import annotations

import html
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from studio.errors import ValidationError
from studio.loras.sources import inside_roots
from studio.settings import Settings
from studio.stack.schema import parse_model
from studio.training.dataset import CAPTIONS_JSONL, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from studio.training.options import TrainOptions

UPLOADS = "training-uploads"
UPLOAD_SUFFIXES = (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES, ".txt", ".jsonl")
# Form fields, in the order the tab passes its widgets.
FIELDS = (
    "name", "experts", "steps", "rank", "alpha", "lr", "batch", "grad_accum", "seed", "frames", "width",
    "height", "boundary", "shift", "target_modules", "hflip", "random_crop", "gradient_checkpointing",
    "save_every", "sample_every", "sample_steps", "holdout", "trigger", "sample_prompt", "sample_image",
)  # fmt: skip
_INTS = {"steps", "rank", "batch", "grad_accum", "seed", "frames", "width", "height", "save_every",
         "sample_every", "sample_steps", "holdout"}  # fmt: skip
_FLOATS = {"alpha", "lr", "boundary", "shift"}
_OPTIONAL = {"alpha", "boundary", "shift", "sample_steps", "sample_prompt", "sample_image"}


def dataset_roots(settings: Settings) -> list[Path]:
    """Folders the page may read datasets from: ./datasets, $STUDIO_DATASETS and the page's uploads."""
    roots = [
        Path("datasets"),
        *(Path(p) for p in os.environ.get("STUDIO_DATASETS", "").split(os.pathsep) if p),
    ]
    roots.append(Path(settings.cache_dir) / UPLOADS)
    return [r.expanduser().resolve() for r in roots]


def dataset_folder(text: str | None, settings: Settings) -> Path:
    """The folder typed in the page, if it lies inside :func:`dataset_roots` (the server's other files stay private)."""
    if not text or not text.strip():
        raise ValidationError("Type a dataset folder or upload clips with their captions first.")
    roots = dataset_roots(settings)
    path = Path(text.strip()).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        if inside_roots(candidate, roots) and candidate.is_dir():
            return candidate.resolve()
    folders = ", ".join(str(r) for r in roots[:-1])
    raise ValidationError(
        f"The dataset folder {text.strip()!r} was not found inside the dataset folders ({folders}); put it "
        "there (or add its parent to STUDIO_DATASETS), or upload the clips here."
    )


def save_uploads(files: list[Any] | None, settings: Settings) -> Path:
    """Copy uploaded clips, images and captions into a new folder of the uploads area; returns it."""
    paths = [Path(getattr(f, "name", f)) for f in files or []]
    if not paths:
        raise ValidationError("Choose the clips (and their .txt captions or captions.jsonl) to upload.")
    folder = Path(settings.cache_dir) / UPLOADS / secrets.token_hex(6)
    folder.mkdir(parents=True, exist_ok=True)
    skipped = []
    for path in paths:
        name = Path(path.name).name
        if name.startswith(".") or (path.suffix.lower() not in UPLOAD_SUFFIXES and name != CAPTIONS_JSONL):
            skipped.append(name)
            continue
        shutil.copyfile(path, folder / name)
    if not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        raise ValidationError(
            f"None of the uploaded files is a clip, image or caption ({', '.join(skipped[:5])}); upload "
            f"{', '.join(VIDEO_SUFFIXES)} clips or images with .txt captions."
        )
    return folder.resolve()


def options_from_form(model: str, values: dict[str, Any]) -> TrainOptions:
    """TrainOptions from the form's values (blank optional fields = the model's defaults)."""
    data: dict[str, Any] = {"model": model}
    for key, value in values.items():
        if key in _OPTIONAL and (
            value is None or value == "" or (key in ("alpha", "sample_steps") and not value)
        ):
            continue
        if key in _INTS and value is not None:
            value = int(value)
        elif key in _FLOATS and value is not None:
            value = float(value)
        elif key == "name":
            value = (value or "").strip()
        data[key] = value
    return parse_model(TrainOptions, data, "training settings")


def estimate_html(estimate, card: int | None, card_text: str) -> str:
    gb = estimate.peak_vram_bytes / 1e9
    if card is None:
        verdict, kind = f"about {gb:.1f} GB of GPU memory ({card_text})", "info"
    else:
        fits = estimate.fits(card)
        kind = {"fits": "ok", "tight": "warning"}.get(fits, "error")
        verdict = f"about {gb:.1f} GB of GPU memory: it {'fits' if fits == 'fits' else fits} ({card_text})"
    parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.2f}" for k, v in estimate.breakdown.items())
    notes = " ".join(estimate.notes)
    return (
        f'<div class="studio-status studio-status-{kind}">Training needs {html.escape(verdict)}.</div>'
        f'<div class="train-vram-parts">{html.escape(parts)} GB. {html.escape(notes)}</div>'
    )


def loss_table(snapshot) -> list[dict[str, Any]]:
    """Rows (step, loss, series) for the loss plot: the training loss and the validation loss per expert."""
    rows = []
    for expert, points in (snapshot.loss if snapshot else {}).items():
        rows += [{"step": s, "loss": v, "series": f"{expert}-noise"} for s, v in points]
    for expert, points in (snapshot.val if snapshot else {}).items():
        rows += [{"step": s, "loss": v, "series": f"{expert}-noise validation"} for s, v in points]
    return rows


def sample_choices(snapshot) -> list[tuple[str, str]]:
    """("step N", video file name) for each sample render of the run."""
    return [(f"step {step}", Path(video).name) for step, video in (snapshot.samples if snapshot else [])]


def status_text(snapshot) -> tuple[str, str]:
    if snapshot is None:
        return "No training run yet.", "info"
    if snapshot.status == "failed":
        return snapshot.error or "The run failed.", "error"
    eta = ""
    if snapshot.eta_s is not None and snapshot.running:
        minutes, seconds = divmod(int(snapshot.eta_s), 60)
        eta = f", about {minutes} min {seconds} s left"
    step = f" — step {snapshot.step}/{snapshot.total}{eta}" if snapshot.total else ""
    done = ""
    if snapshot.status == "finished" and snapshot.files:
        done = ". Exported " + ", ".join(Path(f).name for f in snapshot.files) + " (in the library now)"
    elif snapshot.status == "stopped":
        done = ". Stopped with a checkpoint: choose it under Resume to go on"
    kind = "ok" if snapshot.status == "finished" else "info"
    return (
        f"{snapshot.name}: {snapshot.status}{step}{done}. {snapshot.message.splitlines()[0] if snapshot.message else ''}",
        kind,
    )


def run_choices(runs: list) -> list[tuple[str, str]]:
    """Resumable runs on disk: (label, run folder)."""
    out = []
    for run_dir, record in runs:
        if record.checkpoints:
            last = record.checkpoints[-1].step
            out.append(
                (f"{record.name} · step {last}/{record.options.steps} · {record.status}", str(run_dir))
            )
    return out
