"""One render of a batch (:class:`Job`) and a batch of them, whatever made it (a scene file or a grid).

A job is fully resolved: the start image's file, the render settings (the seed may still be
``None``: the batch state then draws one once and keeps it) and the stack. Its
*fingerprint* covers everything that changes the video except a drawn seed, so a re-run can
tell a finished job from one whose scene was edited since.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from studio.stack.schema import RenderSettings, Stack

__all__ = ["Batch", "Job", "file_sha256", "fingerprint", "job_id", "slug"]

_SLUG_MAX = 40


def slug(text: str) -> str:
    """Lowercase ASCII letters, digits and dashes (at most 40 characters); ``scene`` when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-").lower()[:_SLUG_MAX].rstrip("-")
    return cleaned or "scene"


def job_id(index: int, name: str, repeat: int = 0, repeats: int = 1) -> str:
    """``03-intro`` for the third scene, ``03-intro-r2`` for its second repeat."""
    base = f"{index + 1:02d}-{slug(name)}"
    return f"{base}-r{repeat + 1}" if repeats > 1 else base


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(settings: RenderSettings, stack: Stack, image_sha: str, model: str | None, fuse: bool) -> str:
    """A hex digest of what makes the video: settings (seed only when given), stack, image, model, fuse."""
    data = {
        "settings": settings.model_dump(mode="json"),
        "stack": stack.model_dump(mode="json"),
        "image": image_sha,
        "model": model,
        "fuse": fuse,
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Job:
    """One render of a batch."""

    id: str  # unique in the batch, safe as a file stem: "02-forest" or "02-forest-r3"
    scene: str  # the scene's name (or the grid cell's label)
    index: int  # the scene's position in the file (0-based)
    repeat: int  # 0-based
    image: Path
    settings: RenderSettings  # seed None: drawn once by the batch state
    stack: Stack
    fingerprint: str
    fuse: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # grid: {"row": "style 0.4", "col": "seed 1"}

    def summary(self) -> str:
        return f"{self.scene}: {self.stack.summary()}"


@dataclass(frozen=True)
class Batch:
    """The jobs of a batch in order, the model they are for, and notes (e.g. paths that were replaced)."""

    jobs: tuple[Job, ...]
    model: str | None = None
    source: Path | None = None
    notes: tuple[str, ...] = ()
    kind: str = "scenes"  # "scenes" or "grid"

    def job(self, job_id: str) -> Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)
