"""Reading videos back: size, frame count and fps, the embedded render record, and the frames."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from studio.errors import ValidationError
from studio.media.video import ffmpeg_exe, ffmpeg_path_arg


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds out about a video file."""

    frames: int
    width: int
    height: int
    fps: float
    duration_s: float


# --------------------------------------------------------------------------- readers


def _video_unreadable(path: Path, detail: str = "") -> ValidationError:
    if not path.exists():
        return ValidationError(f"The video {path} was not found. Check the path and try again.")
    if path.is_dir():
        return ValidationError(f"{path} is a folder, not a video. Choose a video file.")
    extra = f" ({detail})" if detail else ""
    return ValidationError(
        f"The file {path.name} is not a readable video{extra}. Choose an MP4 made by the studio or another video file."
    )


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """Global ``key=value`` tags of ffmpeg's ffmetadata format, with escapes undone.

    ffmpeg escapes ``=``, ``;``, ``#``, ``\\`` and newline with a backslash; lines that
    start with ``;`` or ``#`` are comments and ``[SECTION]`` starts per-stream/chapter data.
    """
    tags: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    in_value = False
    at_line_start = True
    skip_line = False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        i += 1
        if skip_line:
            if char == "\n":
                skip_line = False
                at_line_start = True
            continue
        if at_line_start:
            at_line_start = False
            if char in ";#":
                skip_line = True
                continue
            if char == "[":
                break  # only the global section matters
            if char == "\n":
                at_line_start = True
                continue
        if char == "\\" and i < n:
            (value if in_value else key).append(text[i])
            i += 1
            continue
        if char == "\n":
            if in_value:
                tags["".join(key)] = "".join(value)
            key, value, in_value, at_line_start = [], [], False, True
            continue
        if char == "=" and not in_value:
            in_value = True
            continue
        (value if in_value else key).append(char)
    if in_value:
        tags["".join(key)] = "".join(value)
    return tags


def read_video_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings dict embedded by :func:`write_video`, or None when the file has none.

    Raises ``ValidationError`` when ``path`` is missing or not a readable video.
    """
    path = Path(path)
    stdout, _ = _run_ffmpeg_reader(path, ["-f", "ffmetadata", "pipe:1"])
    tags = _parse_ffmetadata(stdout.decode("utf-8", errors="replace"))
    comment = tags.get("comment")
    if not comment:
        return None
    try:
        data = json.loads(comment)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_SIZE_RE = re.compile(r", (\d+)x(\d+)(?=[,\s\[]|$)")
_FPS_RE = re.compile(r", ([\d.]+)(k?) (fps|tbr)\b")
_FRAME_RE = re.compile(r"frame=\s*(\d+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def _run_ffmpeg_reader(path: Path, output_args: list[str]) -> tuple[bytes, str]:
    """Run ffmpeg on an input file; return (stdout, stderr) or raise ``ValidationError``."""
    if not path.is_file():
        raise _video_unreadable(path)
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-i",
        ffmpeg_path_arg(path),
        *output_args,
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _video_unreadable(path, "reading it took too long") from exc
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise _video_unreadable(path, lines[-1].strip() if lines else "")
    return result.stdout, stderr


def _stream_size(stream_text: str) -> tuple[int, int] | None:
    match = _STREAM_RE.search(stream_text)
    size = _SIZE_RE.search(match.group("rest")) if match else None
    return (int(size.group(1)), int(size.group(2))) if size else None


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, size, frame rate and duration of a video file (``ValidationError`` if unreadable).

    The frames are decoded and counted (exact, and quick for studio-sized clips).
    """
    path = Path(path)
    _, stderr = _run_ffmpeg_reader(path, ["-map", "0:v:0", "-f", "null", "-"])
    header = stderr.split("Output #0", 1)[0]
    size = _stream_size(header)
    frames = _FRAME_RE.findall(stderr)
    if size is None or not frames:
        raise _video_unreadable(path, "it has no video stream")
    stream = _STREAM_RE.search(header)
    fps = 0.0
    if stream:
        rates = {
            unit: float(value) * (1000 if k else 1) for value, k, unit in _FPS_RE.findall(stream.group(0))
        }
        fps = rates.get("fps") or rates.get("tbr") or 0.0
    count = int(frames[-1])
    duration = 0.0
    if fps > 0:
        duration = count / fps
    elif match := _DURATION_RE.search(header):
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return VideoInfo(frames=count, width=size[0], height=size[1], fps=fps, duration_s=duration)


def read_frames(path: str | os.PathLike[str]) -> np.ndarray:
    """All frames of a video as a ``[F, H, W, 3]`` ``uint8`` RGB array (``ValidationError`` if unreadable)."""
    path = Path(path)
    raw, stderr = _run_ffmpeg_reader(path, ["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
    output = stderr.split("Output #0", 1)[1] if "Output #0" in stderr else ""
    size = _stream_size(output)  # the decoded size, after any rotation ffmpeg applied
    if size is None:
        raise _video_unreadable(path, "it has no video stream")
    width, height = size
    frame_bytes = width * height * 3
    if not raw or len(raw) % frame_bytes:
        raise _video_unreadable(path, "it has no complete frames")
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3).copy()
