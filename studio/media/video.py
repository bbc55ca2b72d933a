"""Writing videos: H.264 (``libx264``) ``yuv420p`` MP4s with ``+faststart`` (browser-playable),
encoded by the ffmpeg binary that ``imageio-ffmpeg`` ships, published atomically. The render settings
are embedded as compact JSON in the container's ``comment`` tag (read back by
:func:`studio.media.probe.read_video_metadata`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from studio.errors import OutputError, RenderCancelled, ValidationError
from studio.media.files import atomic_output

# A single argv entry may be at most 128 KiB on Linux; the settings JSON is far smaller.
_MAX_METADATA_BYTES = 64 * 1024


def ffmpeg_exe() -> str:
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # imageio-ffmpeg raises RuntimeError when it finds none
        raise OutputError(
            "The ffmpeg program that encodes videos could not be found. "
            "Reinstall the studio (pip install imageio-ffmpeg) and try again."
        ) from exc


def ffmpeg_path_arg(path: Path) -> str:
    """An ffmpeg input/output argument that cannot be read as a protocol or option."""
    return "file:" + str(Path(path).absolute())


# --------------------------------------------------------------------------- writers


def _as_uint8_frames(frames: Any) -> np.ndarray:
    try:
        array = np.asarray(frames)
    except Exception as exc:
        raise ValidationError("The video frames are not an array of images; nothing was written.") from exc
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValidationError(
            f"The video frames have shape {tuple(array.shape)}, but [frames, height, width, 3] RGB "
            "with at least one frame is needed; nothing was written."
        )
    height, width = array.shape[1], array.shape[2]
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValidationError(
            f"The video is {width}×{height} pixels, but H.264 needs an even width and height. "
            "Choose a resolution that is a multiple of 16."
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValidationError(
                "The video frames contain NaN or infinite values, so the render went wrong. "
                "Try again with different settings (e.g. another precision or fewer LoRAs)."
            )
        return np.ascontiguousarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8))
    raise ValidationError(
        f"The video frames have data type {array.dtype}; use uint8 (0-255) or float (0-1). Nothing was written."
    )


def _ffmpeg_failure(returncode: int, stderr: str, what: str = "video") -> OutputError:
    text = stderr.strip()
    lower = text.lower()
    if "no space left on device" in lower:
        return OutputError(
            f"The {what} could not be written: the disk is full. Free some space and render again."
        )
    if "file too large" in lower or returncode == -signal.SIGXFSZ:
        return OutputError(
            f"The {what} could not be written: the file grew past the largest size this system allows "
            "(the disk may be full or a file-size limit is set). Free some space and render again."
        )
    if "permission denied" in lower or "read-only file system" in lower:
        return OutputError(
            f"The {what} could not be written: the output folder is not writable. "
            "Choose another output folder or fix its permissions."
        )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return OutputError(
            f"The {what} could not be written: the ffmpeg encoder was stopped ({name}). "
            "Render again; if it keeps happening, check the system's memory and disk."
        )
    last = text.splitlines()[-1] if text else f"exit status {returncode}"
    return OutputError(
        f"The {what} could not be encoded (ffmpeg said: {last}). "
        "Check the output folder and settings, then render again."
    )


def _encode_mp4(
    frames: np.ndarray,
    target: Path,
    *,
    fps: int,
    comment: bytes,
    cancel_check: Callable[[], bool] | None,
) -> None:
    """Encode uint8 frames into ``target`` (which may exist and is overwritten)."""
    _, height, width, _ = frames.shape
    color = "range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"
    cmd: list[str | bytes] = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-an",
        "-vf",
        f"scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,setparams={color}",
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-crf",
        "17",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        "-map_metadata",
        "-1",
        "-metadata",
        b"comment=" + comment,
        "-f",
        "mp4",
        ffmpeg_path_arg(target),
    ]
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile)
        except OSError as exc:
            raise OutputError(
                f"The ffmpeg encoder could not be started ({exc.strerror or exc}). "
                "Reinstall the studio (pip install imageio-ffmpeg) and try again."
            ) from exc
        assert proc.stdin is not None
        try:
            try:
                for frame in frames:
                    if cancel_check is not None and cancel_check():
                        raise RenderCancelled()
                    proc.stdin.write(frame.tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg died; its exit status and stderr say why
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if returncode != 0:
            errfile.seek(0)
            stderr = errfile.read().decode("utf-8", errors="replace")
            raise _ffmpeg_failure(returncode, stderr)


def write_video(
    frames: Any,
    path: str | os.PathLike[str],
    *,
    fps: int,
    metadata: dict[str, Any],
    cancel_check: Callable[[], bool] | None = None,
) -> Path:
    """Write ``frames`` as a browser-playable MP4 at ``path`` and return the path.

    ``frames`` is ``[F, H, W, 3]``: ``uint8`` or float in ``[0, 1]`` (clipped and
    rounded). H and W must be even. ``metadata`` is stored as compact JSON in the MP4
    ``comment`` tag (see :func:`read_video_metadata`).

    The file appears at ``path`` complete or not at all; an existing ``path`` is never
    overwritten (``OutputError``). ``cancel_check`` is called before each frame is sent
    to the encoder; when it returns True the encoder is killed, nothing is written and
    ``RenderCancelled`` is raised. Encoder failures raise ``OutputError``.
    """
    path = Path(path)
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 240:
        raise ValidationError(f"The frame rate {fps!r} is not usable; choose a whole number from 1 to 240.")
    array = _as_uint8_frames(frames)
    try:
        comment = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"The render settings could not be stored in the video ({exc}). Nothing was written."
        ) from exc
    comment_bytes = comment.encode("utf-8")
    if len(comment_bytes) > _MAX_METADATA_BYTES or b"\0" in comment_bytes:
        raise ValidationError(
            "The render settings are too large to store in the video. Shorten the prompt or notes and render again."
        )
    with atomic_output(path, what="video") as tmp:
        _encode_mp4(array, tmp, fps=int(fps), comment=comment_bytes, cancel_check=cancel_check)
    return path
