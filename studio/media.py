"""Video, image and JSON files on disk.

Every writer here is atomic and never overwrites by accident: the content goes to a
hidden temporary file in the target folder (``.<name>.partial-XXXX``), is flushed to
disk, and is then published under its final name with a no-clobber hard link. A crash,
a killed encoder or a full disk therefore never leaves a partial file under the final
name, and the temporary file is always removed. All of that lives in one helper,
:func:`_atomic_output`, used by every writer.

Videos are H.264 (``libx264``) ``yuv420p`` MP4s with ``+faststart`` (browser-playable),
encoded by the ffmpeg binary that ``imageio-ffmpeg`` ships. The render settings are
embedded as compact JSON in the container's ``comment`` tag and can be read back with
:func:`read_video_metadata`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from studio.errors import OutputError, RenderCancelled, ValidationError

__all__ = [
    "VideoInfo",
    "probe_video",
    "read_frames",
    "read_video_metadata",
    "save_png_atomic",
    "unique_stem",
    "write_json_atomic",
    "write_video",
]

# A single argv entry may be at most 128 KiB on Linux; the settings JSON is far smaller.
_MAX_METADATA_BYTES = 64 * 1024
_PUBLISHED_MODE = 0o644
_PREFIX_MAX = 40


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds out about a video file."""

    frames: int
    width: int
    height: int
    fps: float
    duration_s: float


# --------------------------------------------------------------------------- helpers


def _ffmpeg_exe() -> str:
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # imageio-ffmpeg raises RuntimeError when it finds none
        raise OutputError(
            "The ffmpeg program that encodes videos could not be found. "
            "Reinstall the studio (pip install imageio-ffmpeg) and try again."
        ) from exc


def _ffmpeg_path_arg(path: Path) -> str:
    """An ffmpeg input/output argument that cannot be read as a protocol or option."""
    return "file:" + str(Path(path).absolute())


def _os_error_reason(exc: OSError, folder: Path) -> str:
    """The part of an error sentence that says why a write failed and what to do."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return "the disk is full. Free some space and try again."
    if exc.errno == errno.EFBIG:
        return "the file grew past the largest size this system allows. Free some space or raise the file-size limit and try again."
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"the folder {folder} is not writable. Choose another output folder or fix its permissions."
    if exc.errno == errno.EROFS:
        return f"the folder {folder} is on a read-only disk. Choose another output folder."
    if exc.errno == errno.ENOENT:
        return f"the folder {folder} does not exist. Create it or choose another output folder."
    reason = exc.strerror or str(exc)
    return f"{reason}. Check the output folder and try again."


def _exists_error(path: Path, what: str) -> OutputError:
    return OutputError(
        f"The {what} was not saved because {path.name} already exists in {path.parent}. "
        "Choose another name; the existing file was left untouched."
    )


def _fsync_dir(folder: Path) -> None:
    """Make a new directory entry durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, *, overwrite: bool, what: str) -> None:
    """Give the finished temporary file its final name.

    Without ``overwrite`` this is a hard link, which fails if ``path`` exists, so an
    existing file is never replaced. On filesystems without hard links it falls back to
    an exists-check plus rename (a tiny race, but still never a partial file).
    """
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path, what) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists():
            raise _exists_error(path, what) from None
        os.rename(tmp, path)
        return
    with contextlib.suppress(OSError):
        tmp.unlink()  # retried by the caller's cleanup


@contextlib.contextmanager
def _atomic_output(path: str | os.PathLike[str], *, what: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it there when the block succeeds.

    The block writes the complete file to the yielded path. When the block returns, the
    file is fsynced and published (no-clobber unless ``overwrite``). Whatever happens,
    the temporary file is gone afterwards. ``OSError``s become ``OutputError`` sentences;
    ``StudioError``s raised by the block pass through unchanged.
    """
    path = Path(path)
    folder = path.parent
    if not overwrite and path.exists():
        raise _exists_error(path, what)
    if not folder.is_dir():
        raise OutputError(
            f"The {what} could not be written: the folder {folder} does not exist. "
            "Create it or choose another output folder."
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=folder)
    except OSError as exc:
        raise OutputError(f"The {what} could not be written: {_os_error_reason(exc, folder)}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _PUBLISHED_MODE)
        _publish(tmp, path, overwrite=overwrite, what=what)
        _fsync_dir(folder)
    except OSError as exc:
        raise OutputError(f"The {what} could not be written: {_os_error_reason(exc, folder)}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
        _ffmpeg_exe(),
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
        _ffmpeg_path_arg(target),
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
    with _atomic_output(path, what="video") as tmp:
        _encode_mp4(array, tmp, fps=int(fps), comment=comment_bytes, cancel_check=cancel_check)
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, overwrite: bool = False) -> Path:
    """Write ``data`` as indented UTF-8 JSON at ``path`` atomically and return the path.

    Without ``overwrite`` an existing file is left alone and ``OutputError`` is raised;
    with it the file is replaced in one step (readers see the old or the new content).
    """
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise OutputError(
            f"The settings file {path.name} could not be written because a value cannot be saved as JSON ({exc})."
            " Report this as a bug; the existing file was left untouched."
        ) from exc
    with _atomic_output(path, what="settings file", overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_cache_json(path: str | os.PathLike[str], data: Any) -> bool:
    """Replace a cache file (an index, a registry) atomically; False when it could not be written.

    A cache that cannot be written only makes the next run slower, so this never raises.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data, overwrite=True)
    except (OutputError, OSError):
        return False
    return True


def save_png_atomic(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save ``image`` as a PNG at ``path`` atomically (never overwriting) and return the path."""
    path = Path(path)
    if not isinstance(image, Image.Image):
        raise ValidationError("Only a picture can be saved as a PNG; nothing was written.")
    with _atomic_output(path, what="image", overwrite=False) as tmp:
        try:
            image.save(tmp, format="PNG")
        except OSError as exc:
            if exc.errno is not None:
                raise  # a real I/O error: _atomic_output turns it into a sentence
            raise OutputError(
                f"The image could not be saved as a PNG ({exc}). Convert it to RGB and try again."
            ) from exc
        except (ValueError, KeyError) as exc:  # PIL: mode that PNG cannot store
            raise OutputError(
                f"The image could not be saved as a PNG ({exc}). Convert it to RGB and try again."
            ) from exc
    return path


def _slug(prefix: str) -> str:
    text = unicodedata.normalize("NFKD", str(prefix)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    text = text[:_PREFIX_MAX].rstrip("-")
    return text or "video"


def unique_stem(folder: str | os.PathLike[str], prefix: str, *, now: datetime | None = None) -> str:
    """A file stem ``YYYYmmdd-HHMMSS-<prefix>-<4 hex>`` that no file in ``folder`` starts with.

    ``prefix`` is reduced to lowercase ASCII letters, digits and dashes (at most 40
    characters). The stem is free when this returns; the writers' no-clobber publish
    still protects against another process taking the same name in the meantime.
    """
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise OutputError(f"The output folder could not be read: {_os_error_reason(exc, folder)}") from exc
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{_slug(prefix)}"
    taken = [name for name in names if name.startswith(base)]
    for attempt in range(10_000):
        suffix = secrets.token_hex(2) if attempt < 1_000 else secrets.token_hex(4)
        stem = f"{base}-{suffix}"
        if not any(name.startswith(stem) for name in taken):
            return stem
    raise OutputError(f"No free file name could be found in {folder}. Clean up the folder and try again.")


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
        _ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-i",
        _ffmpeg_path_arg(path),
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
