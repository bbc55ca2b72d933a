"""Atomic files on disk: every writer here never overwrites by accident and never leaves a partial file.

The content goes to a hidden temporary file in the target folder (``.<name>.partial-XXXX``), is flushed
to disk, and is then published under its final name with a no-clobber hard link. A crash, a killed
encoder or a full disk therefore never leaves a partial file under the final name, and the temporary
file is always removed. All of that lives in one helper, :func:`atomic_output`, used by every writer
(JSON, PNG, and the MP4 writer of :mod:`studio.media.video`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from studio.errors import OutputError, ValidationError

_PUBLISHED_MODE = 0o644
_PREFIX_MAX = 40


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
def atomic_output(path: str | os.PathLike[str], *, what: str, overwrite: bool = False) -> Iterator[Path]:
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
    with atomic_output(path, what="settings file", overwrite=overwrite) as tmp:
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
    with atomic_output(path, what="image", overwrite=False) as tmp:
        try:
            image.save(tmp, format="PNG")
        except OSError as exc:
            if exc.errno is not None:
                raise  # a real I/O error: atomic_output turns it into a sentence
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
