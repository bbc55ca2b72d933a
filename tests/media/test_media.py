"""studio.outputs.render_files (files, video, probe): real ffmpeg, real files, real failures (no mocked encoder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from studio.errors import OutputError, RenderCancelled, ValidationError
from studio.media import files as files_mod
from studio.media import probe as probe_mod
from studio.media import video as video_mod

REPO = Path(__file__).resolve().parents[2]


def make_frames(count: int = 9, height: int = 32, width: int = 48) -> np.ndarray:
    """Smooth moving gradients: compress well and survive H.264 almost unchanged."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (x * 255 // max(width - 1, 1) + i * 8) % 256
        frames[i, ..., 1] = y * 255 // max(height - 1, 1)
        frames[i, ..., 2] = 128
    return frames


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".partial-" in name)


def ffmpeg_info(path: Path) -> str:
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, check=False
    )
    return result.stderr.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- writing videos


@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 48)])
def test_write_probe_and_read_back(tmp_path: Path, height: int, width: int) -> None:
    frames = make_frames(9, height, width)
    path = video_mod.write_video(frames, tmp_path / "clip.mp4", fps=16, metadata={"seed": 1})

    assert path == tmp_path / "clip.mp4"
    info = probe_mod.probe_video(path)
    assert info == probe_mod.VideoInfo(frames=9, width=width, height=height, fps=16.0, duration_s=9 / 16)

    decoded = probe_mod.read_frames(path)
    assert decoded.shape == (9, height, width, 3)
    assert decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean()
    assert error < 6, error
    assert leftovers(tmp_path) == []


def test_video_is_browser_playable_h264(tmp_path: Path) -> None:
    path = video_mod.write_video(make_frames(), tmp_path / "clip.mp4", fps=24, metadata={})
    info = ffmpeg_info(path)
    stream = next(line for line in info.splitlines() if "Video:" in line)
    assert "h264" in stream
    assert "yuv420p" in stream
    assert "bt709" in stream
    data = path.read_bytes()
    assert data[4:8] == b"ftyp"
    assert data.find(b"moov") < data.find(b"mdat"), "+faststart puts the index before the media data"
    assert (path.stat().st_mode & 0o777) == 0o644


def test_float_frames_are_accepted(tmp_path: Path) -> None:
    frames = make_frames().astype(np.float32) / 255.0
    frames[0, 0, 0] = [-0.5, 1.5, 0.5]  # out of range values are clipped
    path = video_mod.write_video(frames, tmp_path / "f.mp4", fps=8, metadata={})
    assert probe_mod.probe_video(path).frames == 9


TRICKY = [
    "plain",
    "quotes \" and ' and back\\slash \\n not-a-newline",
    "real\nnewlines\r\nand\ttabs",
    "ffmetadata specials = ; # \\ [STREAM] at any place",
    "=leading equals;",
    "#starts like a comment",
    ";FFMETADATA1",
    "unicode: héllo wörld ✓ 日本語 🎬 \u200b",
]


@pytest.mark.parametrize("text", TRICKY)
def test_metadata_round_trips(tmp_path: Path, text: str) -> None:
    metadata = {
        "prompt": text,
        text: [1, 2.5, None, True, {"nested": text}],
        "loras": [{"name": "a=b;c#d", "weight": 0.75}],
        "seed": 12345678901,
    }
    path = video_mod.write_video(make_frames(3), tmp_path / "m.mp4", fps=16, metadata=metadata)
    assert probe_mod.read_video_metadata(path) == metadata


def test_metadata_is_compact_json_in_comment_tag(tmp_path: Path) -> None:
    path = video_mod.write_video(make_frames(3), tmp_path / "m.mp4", fps=16, metadata={"a": 1, "b": "x y"})
    assert 'comment         : {"a":1,"b":"x y"}' in ffmpeg_info(path)


def test_video_without_studio_metadata_gives_none(tmp_path: Path) -> None:
    plain = tmp_path / "plain.mp4"
    writer = imageio_ffmpeg.write_frames(str(plain), (32, 32), fps=8, macro_block_size=1)
    writer.send(None)
    for frame in make_frames(3, 32, 32):
        writer.send(frame)
    writer.close()
    assert probe_mod.read_video_metadata(plain) is None

    other = tmp_path / "other.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(plain),
            "-c",
            "copy",
            "-metadata",
            "comment=just a note, not json",
            str(other),
        ],
        check=True,
    )
    assert probe_mod.read_video_metadata(other) is None
    assert probe_mod.probe_video(other).frames == 3


@pytest.mark.parametrize(
    "reader", [probe_mod.read_video_metadata, probe_mod.probe_video, probe_mod.read_frames]
)
def test_readers_refuse_what_is_not_a_video(tmp_path: Path, reader) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video\n" * 50)
    with pytest.raises(ValidationError, match=r"not a readable video.*\.$"):
        reader(junk)
    with pytest.raises(ValidationError, match="was not found"):
        reader(tmp_path / "missing.mp4")
    with pytest.raises(ValidationError, match="is a folder"):
        reader(tmp_path)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((3, 32, 32), np.uint8), "shape"),
        (np.zeros((0, 32, 32, 3), np.uint8), "shape"),
        (np.zeros((3, 32, 32, 4), np.uint8), "shape"),
        (np.zeros((3, 31, 32, 3), np.uint8), "even width and height"),
        (np.zeros((3, 32, 32, 3), np.int64), "data type"),
        (np.full((3, 32, 32, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_frames_are_refused_before_anything_is_written(tmp_path: Path, frames, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        video_mod.write_video(frames, tmp_path / "v.mp4", fps=16, metadata={})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fps", [0, -1, 1000, 16.5, True])
def test_bad_fps_is_refused(tmp_path: Path, fps) -> None:
    with pytest.raises(ValidationError, match="frame rate"):
        video_mod.write_video(make_frames(2), tmp_path / "v.mp4", fps=fps, metadata={})
    assert os.listdir(tmp_path) == []


def test_unserialisable_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="settings could not be stored"):
        video_mod.write_video(make_frames(2), tmp_path / "v.mp4", fps=16, metadata={"x": object()})
    assert os.listdir(tmp_path) == []


def test_existing_video_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "taken.mp4"
    target.write_bytes(b"precious bytes")
    with pytest.raises(OutputError, match=r"already exists.*Choose another name"):
        video_mod.write_video(make_frames(), target, fps=16, metadata={})
    assert target.read_bytes() == b"precious bytes"
    assert sorted(os.listdir(tmp_path)) == ["taken.mp4"]


def test_file_appearing_during_encoding_is_not_clobbered(tmp_path: Path) -> None:
    """Another writer takes the name mid-encode: the hard-link publish refuses."""
    target = tmp_path / "race.mp4"
    calls = []

    def sneaky_other_writer() -> bool:
        calls.append(1)
        if len(calls) == 4:
            target.write_bytes(b"the other render")
        return False

    with pytest.raises(OutputError, match="already exists"):
        video_mod.write_video(make_frames(), target, fps=16, metadata={}, cancel_check=sneaky_other_writer)
    assert target.read_bytes() == b"the other render"
    assert sorted(os.listdir(tmp_path)) == ["race.mp4"]


def test_cancel_kills_encoder_and_leaves_nothing(tmp_path: Path) -> None:
    seen = []

    def cancel() -> bool:
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(RenderCancelled):
        video_mod.write_video(make_frames(), tmp_path / "c.mp4", fps=16, metadata={}, cancel_check=cancel)
    assert len(seen) == 4
    assert os.listdir(tmp_path) == []


def test_missing_output_folder_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"folder .* does not exist\. Create it"):
        video_mod.write_video(make_frames(2), tmp_path / "nope" / "v.mp4", fps=16, metadata={})


_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from studio.media import files as files_mod
    from studio.media import video as video_mod
    from studio.errors import OutputError

    folder = sys.argv[1]
    noise = np.random.default_rng(1).integers(0, 256, (24, 128, 128, 3), dtype=np.uint8)
    big = {"blob": "x" * 200_000}
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    calls = {
        "video": lambda: video_mod.write_video(noise, folder + "/v.mp4", fps=16, metadata={"a": 1}),
        "json": lambda: files_mod.write_json_atomic(folder + "/s.json", big),
        "json_overwrite": lambda: files_mod.write_json_atomic(folder + "/old.json", big, overwrite=True),
        "small_json": lambda: files_mod.write_json_atomic(folder + "/small.json", {"ok": True}),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except OutputError as exc:
            out[name] = str(exc)
    print(json.dumps(out))
    """
)


def test_file_size_limit_leaves_no_partial_files(tmp_path: Path) -> None:
    """A real RLIMIT_FSIZE in a child process: ffmpeg is killed by SIGXFSZ, Python gets EFBIG."""
    (tmp_path / "old.json").write_text('{"old": true}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["video"] is not None and "could not be written" in out["video"]
    assert "Free some space" in out["video"]
    assert out["json"] is not None and "Free some space" in out["json"]
    assert out["json_overwrite"] is not None
    assert out["small_json"] is None
    assert sorted(os.listdir(tmp_path)) == ["old.json", "small.json"]
    assert (tmp_path / "old.json").read_text(encoding="utf-8") == '{"old": true}\n'


# --------------------------------------------------------------------------- json, png, names


def test_json_atomic_write_no_clobber_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    data = {"prompt": "héllo ✓", "n": [1, 2]}
    assert files_mod.write_json_atomic(path, data) == path
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == data
    assert '\n  "prompt": "héllo ✓"' in text
    assert (path.stat().st_mode & 0o777) == 0o644

    with pytest.raises(OutputError, match=r"already exists.*Choose another name"):
        files_mod.write_json_atomic(path, {"other": 1})
    assert path.read_text(encoding="utf-8") == text

    files_mod.write_json_atomic(path, {"new": 2}, overwrite=True)
    assert json.loads(path.read_text(encoding="utf-8")) == {"new": 2}
    assert sorted(os.listdir(tmp_path)) == ["s.json"]


def test_json_failure_leaves_old_content(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"old": 1}', encoding="utf-8")
    with pytest.raises(OutputError, match="cannot be saved as JSON"):
        files_mod.write_json_atomic(path, {"bad": {1, 2}}, overwrite=True)
    with pytest.raises(OutputError, match="cannot be saved as JSON"):
        files_mod.write_json_atomic(path, {"bad": float("nan")}, overwrite=True)
    assert path.read_text(encoding="utf-8") == '{"old": 1}'
    assert sorted(os.listdir(tmp_path)) == ["s.json"]


def test_png_atomic(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    path = files_mod.save_png_atomic(image, tmp_path / "x.start.png")
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        assert loaded.size == (20, 10)
        assert loaded.convert("RGB").getpixel((3, 3)) == (10, 200, 30)
    before = path.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        files_mod.save_png_atomic(Image.new("RGB", (5, 5)), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.start.png"]


def test_unique_stem_format_and_slug(tmp_path: Path) -> None:
    now = datetime(2026, 11, 24, 22, 15, 30)
    stem = files_mod.unique_stem(tmp_path, "My LoRA / ünïcode: ../../etc", now=now)
    assert re.fullmatch(r"20261124-221530-my-lora-unicode-etc-[0-9a-f]{4}", stem), stem
    assert re.fullmatch(
        r"20261124-221530-video-[0-9a-f]{4}", files_mod.unique_stem(tmp_path, "✓✓ / ..", now=now)
    )
    long = files_mod.unique_stem(tmp_path, "x" * 300, now=now)
    assert len(long.split("-")[2]) == 40


def test_unique_stem_skips_taken_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    (tmp_path / "20260102-030405-run-aaaa.start.png").write_bytes(b"")
    (tmp_path / "20260102-030405-run-bbbb.json").write_bytes(b"")
    suffixes = iter(["aaaa", "bbbb", "cccc"])
    monkeypatch.setattr(files_mod.secrets, "token_hex", lambda n: next(suffixes))
    assert files_mod.unique_stem(tmp_path, "run", now=now) == "20260102-030405-run-cccc"


def test_unique_stem_never_collides(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    stems = set()
    for _ in range(300):
        stem = files_mod.unique_stem(tmp_path, "batch", now=now)
        assert stem not in stems
        stems.add(stem)
        (tmp_path / f"{stem}.mp4").write_bytes(b"")
    assert files_mod.unique_stem(tmp_path / "not-made-yet", "x").endswith(tuple("0123456789abcdef"))


def test_png_of_unsavable_mode_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="Convert it to RGB"):
        files_mod.save_png_atomic(Image.new("CMYK", (8, 8)), tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("returncode", "stderr", "expected"),
    [
        (
            1,
            "[out#0/mp4] Error writing trailer: No space left on device",
            "the disk is full. Free some space",
        ),
        (1, "av_interleaved_write_frame(): File too large", "Free some space"),
        (-25, "", "Free some space"),
        (-9, "", "stopped (SIGKILL)"),
        (1, "[libx264] something odd\nConversion failed!", "ffmpeg said: Conversion failed!"),
    ],
)
def test_encoder_failures_become_sentences(returncode: int, stderr: str, expected: str) -> None:
    message = str(video_mod._ffmpeg_failure(returncode, stderr))
    assert expected in message
    assert message.startswith("The video could not be") and message.endswith(".")


def test_cache_files_are_replaced_atomically_and_never_raise(tmp_path):
    from studio.media.files import write_cache_json

    path = tmp_path / "cache" / "index.json"
    assert write_cache_json(path, {"a": 1}) and json.loads(path.read_text()) == {"a": 1}
    assert write_cache_json(path, {"a": 2}) and json.loads(path.read_text()) == {"a": 2}
    (tmp_path / "blocker").write_text("a file where a folder should be")
    assert write_cache_json(tmp_path / "blocker" / "index.json", {"a": 3}) is False
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.json"]  # no temporary files left
