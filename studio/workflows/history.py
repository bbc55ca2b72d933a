"""Render history: every render in the outputs folder, and restoring one into the editor.

A render is ``<stem>.mp4`` + ``<stem>.json`` (the sidecar holding the render record,
see :mod:`studio.outputs.render_files`) + ``<stem>.start.png``. :meth:`History.entries` lists them
newest first from the sidecars, with a thumbnail (the middle frame, extracted once and
cached atomically as ``<stem>.thumb.png``). :meth:`History.restore` turns a render's MP4
or sidecar back into what the editor needs (image, prompt and settings with the seed
used, stack) and says which LoRAs are missing on this machine. An MP4 on its own (e.g.
dropped into the app without its sidecar) is restored from the record embedded in it.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from studio.errors import LoraFileError, OutputError, StudioError, ValidationError
from studio.loras.sources import list_lora_files, resolve_source
from studio.media.files import save_png_atomic
from studio.media.images import image_sha256, load_start_image
from studio.media.probe import probe_video, read_video_metadata
from studio.stack.schema import EXPERTS, LoraSource, RenderSettings, Stack, parse_model

__all__ = ["History", "HistoryEntry", "Restored", "extract_frame", "load_record"]

RECORD_KIND = (
    "wan-lora-studio/render"  # = studio.outputs.render_files.RECORD_KIND (kept import-light: no engine)
)
RECORD_VERSION = 1
MAX_SIDECAR_BYTES = 2 * 1024 * 1024
THUMB_WIDTH = 320
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov"}


# ----------------------------------------------------------------------------- records


def _check_record(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        raise ValidationError(
            f"{where} holds no studio render settings; only videos rendered by the studio (or their .json "
            "sidecars) can be restored."
        )
    version = data.get("version")
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise ValidationError(
            f"{where} was written by a newer version of the studio (record version {version}); update the studio."
        )
    return data


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise ValidationError(f"{path.name} is too large to be a render's settings file.")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"The file {path} was not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"The settings file {path.name} cannot be read ({exc}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"The settings file {path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    return _check_record(data, path.name)


def load_record(path: str | Path) -> tuple[dict[str, Any], Literal["sidecar", "video"]]:
    """The render record of an MP4 (its sidecar when next to it, else the embedded copy) or of a sidecar."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        return _read_sidecar(path), "sidecar"
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        with contextlib.suppress(ValidationError):
            return _read_sidecar(sidecar), "sidecar"
    embedded = read_video_metadata(path)  # ValidationError when not a readable video
    return _check_record(embedded, path.name), "video"


# ----------------------------------------------------------------------------- frames


def extract_frame(video: str | Path, at_s: float = 0.0, *, max_width: int | None = None) -> Image.Image:
    """One frame of ``video`` (the first at or after ``at_s`` seconds) as an RGB image.

    Raises ``ValidationError`` when the file is not a readable video.
    """
    import imageio_ffmpeg

    video = Path(video)
    if not video.is_file():
        raise ValidationError(f"The video {video} was not found.")
    scale = ["-vf", f"scale='min({int(max_width)},iw)':-2"] if max_width else []
    for start in (max(0.0, at_s), 0.0):
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-ss",
            f"{start:.3f}",
            "-i",
            "file:" + str(video.absolute()),
            "-frames:v",
            "1",
            *scale,
            "-f",
            "image2pipe",
            "-vcodec",
            "png",
            "pipe:1",
        ]
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ValidationError(f"A frame of {video.name} could not be read ({exc}).") from None
        if result.returncode == 0 and result.stdout:
            with Image.open(io.BytesIO(result.stdout)) as image:
                return image.convert("RGB")
        if start == 0.0:
            break
    raise ValidationError(f"The file {video.name} is not a readable video; no frame could be read from it.")


# ----------------------------------------------------------------------------- entries


def _created(record: dict[str, Any], fallback: float) -> datetime:
    text = record.get("created")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text).astimezone()
    return datetime.fromtimestamp(fallback).astimezone()


def _model_label(record: dict[str, Any]) -> str:
    model = record.get("model")
    if isinstance(model, dict):
        return str(model.get("label") or model.get("name") or "unknown model")
    return str(model or "unknown model")


@dataclass(frozen=True)
class HistoryEntry:
    """One render as the history gallery shows it."""

    video: Path
    sidecar: Path
    start_image: Path | None
    thumbnail: Path | None
    created: datetime
    model: str
    stack_summary: str
    seed: int | None
    prompt: str
    frames: int
    video_seconds: float  # length of the video
    render_seconds: float | None  # how long the render took
    record: dict[str, Any] = field(repr=False)

    @property
    def time_label(self) -> str:
        return self.created.strftime("%Y-%m-%d %H:%M:%S")

    def caption(self) -> str:
        rendered = f", rendered in {self.render_seconds:.1f} s" if self.render_seconds is not None else ""
        seed = f"seed {self.seed}" if self.seed is not None else "no seed"
        return (
            f"{self.time_label} · {self.model} · {self.stack_summary} · {seed} · "
            f"{self.video_seconds:.1f} s video{rendered}"
        )


@dataclass
class Restored:
    """What the editor needs to go back to a render."""

    settings: RenderSettings  # with the seed the render used
    stack: Stack  # local paths re-pointed to this machine's LoRA folders where found
    image: Image.Image | None
    missing_loras: list[str]  # "Entry: file" for each LoRA not on this machine
    record: dict[str, Any]
    source: Literal["sidecar", "video"]
    model: str | None = None  # the registry name or folder the render used
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        """One status line for the UI."""
        where = "its settings file" if self.source == "sidecar" else "the settings embedded in the video"
        parts = [f"Restored the render from {where} (seed {self.settings.seed})."]
        if self.missing_loras:
            parts.append("Missing on this machine: " + "; ".join(self.missing_loras) + ".")
        parts.extend(self.notes)
        return " ".join(parts)


class History:
    """The renders in ``outputs_dir``; ``lora_roots`` are the LoRA folders checked on restore."""

    def __init__(
        self,
        outputs_dir: str | Path,
        lora_roots: list[Path] | tuple[Path, ...] = (),
        *,
        cache_dir: str | Path | None = None,
        thumb_width: int = THUMB_WIDTH,
    ) -> None:
        self.outputs_dir = Path(outputs_dir).expanduser()
        self.lora_roots = [Path(r) for r in lora_roots]
        self.cache_dir = cache_dir
        self.thumb_width = thumb_width
        self._records: dict[Path, tuple[int, int, dict[str, Any]]] = {}

    @classmethod
    def for_settings(cls, settings) -> History:
        return cls(settings.outputs_dir, settings.resolved_lora_dirs(), cache_dir=settings.cache_dir)

    # ------------------------------------------------------------------ listing
    def _record(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            st = sidecar.stat()
        except OSError:
            return None
        cached = self._records.get(sidecar)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        try:
            record = _read_sidecar(sidecar)
        except ValidationError:
            return None
        self._records[sidecar] = (st.st_mtime_ns, st.st_size, record)
        return record

    def thumbnail(self, video: Path) -> Path | None:
        """``<stem>.thumb.png`` (the middle frame), made once; None when the video cannot be read."""
        thumb = video.with_suffix(".thumb.png")
        if thumb.is_file():
            return thumb
        try:
            info = probe_video(video)
            image = extract_frame(video, info.duration_s / 2, max_width=self.thumb_width)
        except StudioError:
            return None
        try:
            save_png_atomic(image, thumb)
        except OutputError:
            if not thumb.is_file():  # another request made it meanwhile: fine; else unwritable folder
                return None
        return thumb

    def entries(self, limit: int | None = None, *, thumbnails: bool = True) -> list[HistoryEntry]:
        """The renders, newest first (sidecars that are not render records are skipped)."""
        if not self.outputs_dir.is_dir():
            return []
        found = []
        for sidecar in self.outputs_dir.glob("*.json"):
            if sidecar.name.startswith("."):
                continue
            video = sidecar.with_suffix(".mp4")
            if not video.is_file():
                continue
            record = self._record(sidecar)
            if record is None:
                continue
            stat = sidecar.stat()
            found.append((_created(record, stat.st_mtime), stat.st_mtime_ns, sidecar, video, record))
        # renders of the same second (records keep whole seconds) in the order their sidecars were written
        found.sort(key=lambda item: (item[0], item[1], item[2].name), reverse=True)
        if limit is not None:
            found = found[:limit]
        entries = []
        for created, _, sidecar, video, record in found:
            entries.append(self._entry(created, sidecar, video, record, thumbnails))
        return entries

    def _entry(self, created, sidecar: Path, video: Path, record: dict[str, Any], thumbnails: bool):
        settings = record.get("settings") or {}
        try:
            summary = Stack.model_validate(record.get("stack") or {}).summary()
        except Exception:
            summary = "unreadable stack"
        start = (record.get("start_image") or {}).get("file")
        start_path = _sibling(sidecar, start)
        frames = int(settings.get("frames") or 0)
        fps = settings.get("fps") or 0
        total = (record.get("timings") or {}).get("total_s")
        return HistoryEntry(
            video=video,
            sidecar=sidecar,
            start_image=start_path if start_path is not None and start_path.is_file() else None,
            thumbnail=self.thumbnail(video) if thumbnails else None,
            created=created,
            model=_model_label(record),
            stack_summary=summary,
            seed=settings.get("seed"),
            prompt=str(settings.get("prompt") or ""),
            frames=frames,
            video_seconds=frames / fps if fps else 0.0,
            render_seconds=float(total) if isinstance(total, (int, float)) else None,
            record=record,
        )

    def gallery(self, limit: int | None = None) -> list[tuple[str, str]]:
        """``(image path, caption)`` pairs for a ``gr.Gallery``, newest first."""
        items = []
        for entry in self.entries(limit):
            picture = entry.thumbnail or entry.start_image
            if picture is not None:
                items.append((str(picture), entry.caption()))
        return items

    # ------------------------------------------------------------------ restoring
    def restore(self, path: str | Path) -> Restored:
        """A render (its MP4 or sidecar) back into editor values; raises ``ValidationError`` for other files."""
        path = Path(path).expanduser()
        if path.suffix.lower() not in VIDEO_SUFFIXES | {".json"}:
            raise ValidationError(
                f"{path.name} is neither a video nor a settings file; drop one of the studio's MP4s or its .json."
            )
        record, source = load_record(path)
        settings = parse_model(RenderSettings, record.get("settings") or {}, "render settings in the record")
        stack = parse_model(Stack, record.get("stack") or {"entries": []}, "stack in the record")
        notes: list[str] = []
        image = self._restore_image(path, record, notes)
        stack, missing = self._relocate(stack, record, notes)
        model = record.get("model", {}).get("name") if isinstance(record.get("model"), dict) else None
        return Restored(
            settings=settings,
            stack=stack,
            image=image,
            missing_loras=missing,
            record=record,
            source=source,
            model=model,
            notes=notes,
        )

    def _restore_image(self, path: Path, record: dict[str, Any], notes: list[str]) -> Image.Image | None:
        info = record.get("start_image") or {}
        start = _sibling(path, info.get("file"))
        if start is not None and start.is_file():
            try:
                image = load_start_image(start)
            except ValidationError as exc:
                notes.append(f"The start image could not be read ({exc}).")
            else:
                expected = info.get("sha256")
                if expected and image_sha256(image) != expected:
                    notes.append(f"{start.name} has changed since the render; the current file is used.")
                return image
        video = path if path.suffix.lower() in VIDEO_SUFFIXES else path.with_suffix(".mp4")
        if video.is_file():
            try:
                image = extract_frame(video, 0.0)
            except ValidationError:
                pass
            else:
                notes.append(
                    "The start image was not found next to the video; its first frame is used instead "
                    "(at the video's size, so it may differ slightly from the original)."
                )
                return image
        notes.append("The start image was not found; upload it again.")
        return None

    def _relocate(self, stack: Stack, record: dict[str, Any], notes: list[str]) -> tuple[Stack, list[str]]:
        """Point sources at files on this machine where possible; list the LoRAs that are missing."""
        recorded_sha: dict[str, str] = {}
        for lora in record.get("loras") or []:
            if isinstance(lora, dict) and lora.get("file") and lora.get("sha256"):
                recorded_sha[str(lora["file"])] = str(lora["sha256"])
                recorded_sha.setdefault(Path(str(lora["file"])).name, str(lora["sha256"]))
        library: list[Path] | None = None
        missing: list[str] = []
        entries = []
        for entry in stack.entries:
            changes: dict[str, Any] = {}
            reported: set[str] = set()
            for expert in EXPERTS:
                source = entry.source(expert)
                if source is None:
                    continue
                found = self._find(source)
                wanted_sha = _recorded_sha(source, found, recorded_sha)
                if found is None and not source.is_hub:
                    if library is None:
                        library = list_lora_files(self.lora_roots)
                    found = _match_in_library(
                        Path(str(source.path)).name, wanted_sha, library, self.cache_dir
                    )
                    if found is not None:
                        changes[expert] = source.model_copy(update={"path": str(found)})
                        notes.append(f"{entry.name}: {Path(str(source.path)).name} was found at {found}.")
                if found is None:
                    if source.label() not in reported and entry.enabled:
                        missing.append(f"{entry.name} ({source.label()})")
                        reported.add(source.label())
                    continue
                if wanted_sha and self._sha(found) not in (None, wanted_sha):
                    notes.append(
                        f"{entry.name}: {found.name} is not the file this render used (its sha256 differs), "
                        "so a re-render will look different."
                    )
            entries.append(entry.model_copy(update=changes) if changes else entry)
        return Stack(entries=entries), missing

    def _find(self, source: LoraSource) -> Path | None:
        try:
            return resolve_source(source, self.lora_roots)
        except LoraFileError:
            return None

    def _sha(self, path: Path) -> str | None:
        from studio.loras.hashing import file_sha256

        try:
            return file_sha256(path, cache_dir=self.cache_dir)
        except OSError:
            return None


def _recorded_sha(source: LoraSource, found: Path | None, recorded: dict[str, str]) -> str | None:
    """The sha256 the render used for ``source``: the source's own, by the resolved file, or by file name."""
    if source.sha256:
        return source.sha256
    if found is not None and str(found) in recorded:
        return recorded[str(found)]
    if source.is_hub:
        return None
    return recorded.get(str(source.path)) or recorded.get(Path(str(source.path)).name)


def _sibling(path: Path, name: Any) -> Path | None:
    """``name`` next to ``path``, only when it is a plain file name (no folders, nothing hidden)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    return path.parent / name


def _match_in_library(
    name: str, sha: str | None, library: list[Path], cache_dir: str | Path | None
) -> Path | None:
    """A library file for a LoRA recorded on another machine: same sha256 when known, else same name."""
    from studio.loras.hashing import file_sha256

    same_name = [p for p in library if p.name == name]
    if sha:
        for candidate in same_name:
            with contextlib.suppress(OSError):
                if file_sha256(candidate, cache_dir=cache_dir) == sha:
                    return candidate
    return same_name[0] if same_name else None
