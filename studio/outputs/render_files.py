"""Writing a finished render to disk: the MP4, its JSON sidecar and the start image.

The sidecar and the MP4's embedded metadata hold the same *render record*: the full
request (settings with the seed used, the stack), the model, each LoRA's sha256, the
library versions and the timings, so any render can be reproduced or restored.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from studio import __version__
from studio.engine.manager import RenderRequest, RenderResult
from studio.errors import OutputError
from studio.media.files import save_png_atomic, unique_stem, write_json_atomic
from studio.media.images import image_sha256
from studio.media.video import write_video

RECORD_KIND = "wan-lora-studio/render"
RECORD_VERSION = 1
_LIBRARIES = ("torch", "diffusers", "peft", "transformers", "gradio", "huggingface_hub", "safetensors")


@dataclass(frozen=True)
class SavedRender:
    video: Path
    sidecar: Path
    start_image: Path
    record: dict[str, Any]


def library_versions() -> dict[str, str]:
    versions = {"studio": __version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def render_record(
    request: RenderRequest, result: RenderResult, *, start_image_file: str, doctor: str | None = None
) -> dict[str, Any]:
    """The record of a render; ``doctor``: the stack doctor's summary line (when it was computed)."""
    record = {
        "kind": RECORD_KIND,
        "version": RECORD_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": result.model,
        "settings": result.settings.model_dump(mode="json"),
        "stack": request.stack.model_dump(mode="json"),
        "fused": request.fuse,
        "loras": result.loras,
        "lora_file_reads": result.file_reads,
        "start_image": {"file": start_image_file, "sha256": image_sha256(request.image)},
        "experts_per_step": result.experts_per_step,
        # per LoRA and expert: the weight in force at each step (None where the other expert ran)
        "lora_weights_per_step": result.lora_weights_per_step,
        "fused_loras": result.fused,  # expert -> adapters fused for the render (what stays constant)
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "notices": list(result.notices),
        "versions": library_versions(),
    }
    if doctor is not None:
        record["doctor"] = doctor
    return record


def save_render(
    request: RenderRequest,
    result: RenderResult,
    *,
    outputs_dir: Path | None = None,
    video_path: Path | None = None,
    doctor: str | None = None,
) -> SavedRender:
    """Write the render as ``<stem>.mp4`` + ``<stem>.json`` + ``<stem>.start.png``.

    Give ``outputs_dir`` for a fresh unique name there, or ``video_path`` for an exact
    name (the CLI's ``--out``); nothing existing is ever overwritten. If a later file
    fails, the ones already written for this render are removed again. ``doctor`` (the stack
    doctor's summary line) goes into the record as ``"doctor"``.
    """
    if result.frames is None:
        raise ValueError("the render was not decoded; nothing to save")
    if video_path is None:
        assert outputs_dir is not None
        outputs_dir.mkdir(parents=True, exist_ok=True)
        stem = unique_stem(outputs_dir, result.settings.prompt[:40] or "render")
        video_path = outputs_dir / f"{stem}.mp4"
    else:
        video_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path = video_path.with_suffix(".json")
    image_path = video_path.with_suffix(".start.png")
    for path in (video_path, sidecar_path, image_path):
        if path.exists():
            raise OutputError(f"{path} already exists; choose another output name. Nothing was written.")
    record = render_record(request, result, start_image_file=image_path.name, doctor=doctor)
    written: list[Path] = []
    try:
        written.append(write_video(result.frames, video_path, fps=result.settings.fps, metadata=record))
        written.append(write_json_atomic(sidecar_path, record))
        written.append(save_png_atomic(request.image, image_path))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return SavedRender(video=video_path, sidecar=sidecar_path, start_image=image_path, record=record)
