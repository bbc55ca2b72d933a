"""The scenes of a batch joined into one MP4, with a sidecar listing each part (scene, file, time span, seed, stack).

Parts are joined in batch order at the first part's size and frame rate (a part of another
size is scaled to it; a part with another frame rate is refused, since it would play at the
wrong speed). Scenes that are not done are left out and listed as missing in the sidecar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.errors import ValidationError
from studio.media.files import write_json_atomic
from studio.media.probe import probe_video, read_frames
from studio.media.video import write_video

__all__ = ["CONCAT_KIND", "concat_batch"]

CONCAT_KIND = "wan-lora-studio/concat"


def _resized(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS)) for f in frames]
    )


def concat_batch(summary: Any, out: str | Path) -> tuple[Path, Path]:
    """Join the done scenes of ``summary`` (a :class:`~studio.workflows.batch.runner.BatchSummary`) into ``out``.

    Writes ``out`` (MP4) and ``out`` with ``.json`` (the parts); neither is ever overwritten.
    """
    out = Path(out).expanduser()
    if out.suffix.lower() != ".mp4":
        raise ValidationError(f"--concat {out} must end in .mp4.")
    sidecar = out.with_suffix(".json")
    for path in (out, sidecar):
        if path.exists():
            raise ValidationError(
                f"{path} already exists; choose another --concat name (nothing is overwritten)."
            )
    done = [job for job in summary.state.jobs if job.status == "done" and job.video]
    if not done:
        raise ValidationError("No scene of the batch is done, so there is nothing to join.")
    first = probe_video(summary.out_dir / done[0].video)
    parts, chunks, start = [], [], 0
    for job in done:
        path = summary.out_dir / job.video
        info = probe_video(path)
        if info.fps != first.fps:
            raise ValidationError(
                f"{job.scene} plays at {info.fps:g} fps but the first scene at {first.fps:g} fps; "
                "give every scene the same fps to join them."
            )
        frames = _resized(read_frames(path), first.width, first.height)
        record = (
            json.loads((summary.out_dir / job.sidecar).read_text(encoding="utf-8")) if job.sidecar else {}
        )
        parts.append(
            {
                "scene": job.scene,
                "job": job.id,
                "video": job.video,
                "first_frame": start,
                "frames": int(frames.shape[0]),
                "start_s": round(start / first.fps, 4),
                "end_s": round((start + frames.shape[0]) / first.fps, 4),
                "seed": job.seed,
                "prompt": (record.get("settings") or {}).get("prompt"),
                "stack": record.get("stack"),
                "scaled": (info.width, info.height) != (first.width, first.height),
            }
        )
        chunks.append(frames)
        start += int(frames.shape[0])
    missing = [
        {"scene": j.scene, "job": j.id, "status": j.status} for j in summary.state.jobs if j not in done
    ]
    fps = round(first.fps)
    metadata = {
        "kind": CONCAT_KIND,
        "version": 1,
        "parts": [{k: p[k] for k in ("scene", "video", "start_s")} for p in parts],
    }
    write_video(np.concatenate(chunks), out, fps=fps, metadata=metadata)
    data = {
        "kind": CONCAT_KIND,
        "version": 1,
        "video": out.name,
        "fps": fps,
        "width": first.width,
        "height": first.height,
        "frames": start,
        "parts": parts,
        "missing": missing,
    }
    write_json_atomic(sidecar, data)
    return out, sidecar
