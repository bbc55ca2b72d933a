"""A training dataset: a folder of clips and/or images with captions, checked before any training.

Layout (the diffusion-pipe / musubi-tuner convention): ``clip.mp4`` (``.webm``, ``.mov``)
or ``still.png`` (``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``) with its caption in
``clip.txt`` next to it, and/or a ``captions.jsonl`` with one
``{"file": "clip.mp4", "caption": "..."}`` per line (``video_path`` / ``image_path`` and
``text`` are accepted too). A ``.txt`` caption wins over a JSONL one.

:func:`check_dataset` reads every file's header (frames, frame rate, size) with the studio's
ffmpeg-based reader and says, per item, what the trainer will cut it to: a frame count of
the form 4k+1 (at the model's frame rate), a size in multiples of 16 with the clip's aspect
ratio at the training area (its *bucket*). Bad items (unreadable, no caption, too small) get
a sentence each and are left out; a dataset without a usable item is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from studio.errors import StudioError, ValidationError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTIONS_JSONL = "captions.jsonl"
_FILE_KEYS = ("file", "video_path", "image_path", "path", "video", "image")
_CAPTION_KEYS = ("caption", "text", "prompt")
MIN_SIDE = 16
FPS_TOLERANCE = 1.01  # a clip this much faster than the model's frame rate is resampled
MAX_CAPTION_CHARS = 10_000


class CutPlan(BaseModel):
    """What the trainer makes of one item: which source frames, at which size."""

    frames: int  # 4k+1
    width: int  # multiple of 16
    height: int
    indices: list[int]  # source frame numbers used, in order

    @property
    def bucket(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


class DatasetItem(BaseModel):
    name: str  # the file name inside the folder
    path: str
    kind: Literal["video", "image"]
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int = 0
    mtime_ns: int = 0
    caption: str | None = None
    caption_source: Literal["txt", "jsonl"] | None = None
    problems: list[str] = Field(default_factory=list)  # why it is left out (one sentence each)
    notes: list[str] = Field(default_factory=list)  # what changes on the way in
    cut: CutPlan | None = None

    @property
    def usable(self) -> bool:
        return not self.problems and self.cut is not None and bool(self.caption)


class DatasetReport(BaseModel):
    folder: str
    target_frames: int
    target_width: int
    target_height: int
    fps: int
    items: list[DatasetItem]
    notes: list[str] = Field(default_factory=list)  # about the folder (bad JSONL lines, orphan captions)

    @property
    def usable(self) -> list[DatasetItem]:
        return [item for item in self.items if item.usable]

    def buckets(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.usable:
            counts[item.cut.bucket] = counts.get(item.cut.bucket, 0) + 1
        return dict(sorted(counts.items()))

    def problems(self) -> list[str]:
        return [p for item in self.items for p in item.problems]

    def require_usable(self) -> list[DatasetItem]:
        usable = self.usable
        if not usable:
            reasons = " ".join(self.problems()[:5]) or "It holds no clips or images."
            raise ValidationError(
                f"The dataset {self.folder} has no usable clip or image, so there is nothing to train on. "
                f"{reasons} Add clips ({', '.join(VIDEO_SUFFIXES)}) or images with a caption each "
                "(a same-name .txt file or captions.jsonl)."
            )
        return usable

    def fingerprint(self) -> str:
        """Changes when a used file, caption or cut changes (resume checks it)."""
        digest = hashlib.sha256()
        for item in self.usable:
            digest.update(
                json.dumps(
                    [item.name, item.size_bytes, item.mtime_ns, item.caption, item.cut.model_dump()]
                ).encode()
            )
        return digest.hexdigest()[:16]

    def text(self) -> str:
        """The report as the CLI prints it."""
        videos = [i for i in self.items if i.kind == "video"]
        images = [i for i in self.items if i.kind == "image"]
        lines = [
            f"Dataset {self.folder}: {len(videos)} clip(s), {len(images)} image(s); "
            f"{len(self.usable)} usable, {len(self.items) - len(self.usable)} left out.",
            f"Training cut: {self.target_frames} frames (4k+1) at {self.fps} fps, about "
            f"{self.target_width}×{self.target_height} pixels in multiples of 16, one bucket per "
            "aspect ratio and frame count.",
        ]
        for item in self.items:
            if item.kind == "video" and item.frames is not None:
                source = f"{item.frames} frames, {item.fps:g} fps, {item.width}×{item.height}"
            elif item.width is not None:
                source = f"image, {item.width}×{item.height}"
            else:
                source = "unreadable"
            status = f"→ {item.cut.bucket}" if item.usable else "LEFT OUT"
            lines.append(f"  {item.name}: {source} {status}")
            lines.extend(f"      {p}" for p in item.problems)
            lines.extend(f"      note: {n}" for n in item.notes)
        buckets = self.buckets()
        if buckets:
            lines.append("Buckets: " + ", ".join(f"{b} ({n})" for b, n in buckets.items()))
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- the cut
def frame_indices(
    source_frames: int, source_fps: float | None, target: int, fps: int, resample: bool
) -> list[int]:
    """Source frame numbers for a clip: at most ``target`` (4k+1) frames at ``fps``, from the start."""
    step = 1.0
    if resample and source_fps and source_fps > fps * FPS_TOLERANCE:
        step = source_fps / fps
    available = math.floor((source_frames - 1) / step + 1e-9) + 1 if source_frames > 0 else 0
    count = min(target, available)
    count = (count - 1) // 4 * 4 + 1 if count >= 1 else 0
    return [min(source_frames - 1, round(i * step)) for i in range(count)]


def bucket_size(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """The clip's aspect ratio at (at most) the training area, both sides multiples of 16."""
    area = target_width * target_height
    aspect = width / height
    w = max(MIN_SIDE, int(math.sqrt(area * aspect)) // 16 * 16)
    h = max(MIN_SIDE, int(math.sqrt(area / aspect)) // 16 * 16)
    return w, h


# --------------------------------------------------------------------------- captions
def _read_jsonl(folder: Path, notes: list[str]) -> dict[str, str]:
    path = folder / CAPTIONS_JSONL
    if not path.is_file():
        return {}
    captions: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{CAPTIONS_JSONL} could not be read ({exc}); save it as UTF-8 text.")
        return {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            notes.append(f"{CAPTIONS_JSONL} line {number} is not JSON; write one JSON object per line.")
            continue
        name = next(
            (record[k] for k in _FILE_KEYS if isinstance(record, dict) and isinstance(record.get(k), str)),
            None,
        )
        caption = next(
            (record[k] for k in _CAPTION_KEYS if isinstance(record, dict) and isinstance(record.get(k), str)),
            None,
        )
        if name is None or caption is None:
            notes.append(
                f'{CAPTIONS_JSONL} line {number} needs a "file" and a "caption", e.g. '
                '{"file": "clip.mp4", "caption": "a cat walking"}.'
            )
            continue
        captions[Path(name).name] = caption
    return captions


def _caption_for(media: Path, jsonl: dict[str, str], item: DatasetItem) -> None:
    txt = media.with_suffix(".txt")
    if txt.is_file():
        try:
            item.caption = txt.read_text(encoding="utf-8").strip()
            item.caption_source = "txt"
        except (OSError, UnicodeDecodeError):
            item.problems.append(
                f"{txt.name} is not readable UTF-8 text; save the caption as UTF-8. It is left out."
            )
            return
        if media.name in jsonl:
            item.notes.append(f"the caption comes from {txt.name} ({CAPTIONS_JSONL} has one too)")
    elif media.name in jsonl:
        item.caption = jsonl[media.name].strip()
        item.caption_source = "jsonl"
    if item.caption is None:
        item.problems.append(
            f"{media.name} has no caption: add {txt.name} next to it (or a line in {CAPTIONS_JSONL}). It is left out."
        )
    elif not item.caption:
        where = txt.name if item.caption_source == "txt" else CAPTIONS_JSONL
        item.problems.append(
            f"{media.name} has an empty caption in {where}: write what happens in it. It is left out."
        )
    elif len(item.caption) > MAX_CAPTION_CHARS:
        item.problems.append(
            f"{media.name}'s caption is longer than {MAX_CAPTION_CHARS} characters; shorten it."
        )


def _with_trigger(item: DatasetItem, trigger: str) -> None:
    if trigger and item.caption and trigger.lower() not in item.caption.lower():
        item.caption = f"{trigger}, {item.caption}"
        item.notes.append(f"the trigger word {trigger!r} is added in front of the caption")


# --------------------------------------------------------------------------- probing
def _probe(media: Path, item: DatasetItem) -> None:
    from PIL import Image

    from studio.media.probe import probe_video

    try:
        if item.kind == "video":
            info = probe_video(media)
            item.frames, item.fps, item.width, item.height = info.frames, info.fps, info.width, info.height
        else:
            with Image.open(media) as image:
                image.load()
                item.frames, item.width, item.height = 1, image.width, image.height
    except StudioError as exc:
        item.problems.append(f"{exc} It is left out.")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        item.problems.append(f"{media.name} is not a readable image ({exc}). It is left out.")


def _plan(item: DatasetItem, frames: int, width: int, height: int, fps: int, resample: bool) -> None:
    if item.width is None or item.frames is None:
        return
    if min(item.width, item.height) < MIN_SIDE:
        item.problems.append(
            f"{item.name} is {item.width}×{item.height}, smaller than {MIN_SIDE} pixels on a side. It is left out."
        )
        return
    if item.kind == "image":
        indices = [0]
    else:
        indices = frame_indices(item.frames, item.fps, frames, fps, resample)
        if not indices:
            item.problems.append(f"{item.name} has no frames to train on. It is left out.")
            return
        step = (indices[-1] / (len(indices) - 1)) if len(indices) > 1 else 1.0
        if step > 1.01:
            item.notes.append(
                f"{item.fps:g} fps is faster than the model's {fps} fps: every {step:.2g}th frame is used"
            )
        if len(indices) < frames:
            item.notes.append(
                f"it has {item.frames} frames, so it trains on {len(indices)} (4k+1), not {frames}"
            )
    w, h = bucket_size(item.width, item.height, width, height)
    if w > item.width or h > item.height:
        item.notes.append(f"it is upscaled from {item.width}×{item.height} to {w}×{h}")
    item.cut = CutPlan(frames=len(indices), width=w, height=h, indices=indices)


def check_dataset(
    folder: str | Path,
    *,
    frames: int = 33,
    width: int = 832,
    height: int = 480,
    fps: int = 16,
    resample_fps: bool = True,
    trigger: str = "",
) -> DatasetReport:
    """Read the folder (headers only) and report every item, its caption and its cut."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValidationError(
            f"The dataset folder {root} was not found. Choose a folder of clips and captions."
        )
    notes: list[str] = []
    jsonl = _read_jsonl(root, notes)
    items: list[DatasetItem] = []
    media_stems: set[str] = set()
    for path in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or not path.is_file() or suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            continue
        st = path.stat()
        item = DatasetItem(
            name=path.name,
            path=str(path.resolve()),
            kind="video" if suffix in VIDEO_SUFFIXES else "image",
            size_bytes=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )
        media_stems.add(path.stem)
        _caption_for(path, jsonl, item)
        _with_trigger(item, trigger)
        _probe(path, item)
        _plan(item, frames, width, height, fps, resample_fps)
        items.append(item)
    orphans = sorted(p.name for p in root.glob("*.txt") if p.stem not in media_stems)
    if orphans:
        notes.append(f"caption(s) without a clip or image: {', '.join(orphans[:10])}")
    names = {i.name for i in items}
    missing = sorted(n for n in jsonl if n not in names)
    if missing:
        notes.append(f"{CAPTIONS_JSONL} names file(s) that are not in the folder: {', '.join(missing[:10])}")
    return DatasetReport(
        folder=str(root),
        target_frames=frames,
        target_width=width,
        target_height=height,
        fps=fps,
        items=items,
        notes=notes,
    )
