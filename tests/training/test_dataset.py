"""The dataset check on good and bad folders of real MP4s, PNGs and captions written in code."""

from __future__ import annotations

import json

import pytest
from trainkit import write_clip, write_image

from studio.errors import ValidationError
from studio.training.dataset import bucket_size, check_dataset, frame_indices


def test_a_good_folder_of_clips_images_and_captions(tmp_path):
    write_clip(tmp_path, "a.mp4", "a red wave")
    write_clip(tmp_path, "b.mp4", None, frames=13, width=48, height=32)
    write_image(tmp_path, "still.png", "a still wave", size=(64, 32))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "b.mp4", "caption": "a wide wave"}) + "\n")
    report = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8)
    by_name = {i.name: i for i in report.items}
    assert [i.name for i in report.usable] == ["a.mp4", "b.mp4", "still.png"]
    a, b, still = by_name["a.mp4"], by_name["b.mp4"], by_name["still.png"]
    assert (a.kind, a.frames, a.fps, a.width, a.height) == ("video", 9, 8.0, 32, 32)
    assert a.caption == "a red wave" and a.caption_source == "txt"
    assert b.caption == "a wide wave" and b.caption_source == "jsonl"
    assert b.cut.frames == 9 and b.cut.indices == list(range(9))  # 13 frames, the first 9 (4k+1)
    assert (b.cut.width, b.cut.height) == (32, 16)  # 3:2 at the 32×32 area, multiples of 16
    assert still.kind == "image" and still.cut.frames == 1 and (still.cut.width, still.cut.height) == (32, 16)
    assert report.buckets() == {"32x16x1": 1, "32x16x9": 1, "32x32x9": 1}
    assert report.require_usable() == report.usable
    text = report.text()
    assert "3 usable, 0 left out" in text and "a.mp4: 9 frames, 8 fps, 32×32 → 32x32x9" in text


def test_bad_items_get_a_sentence_each_and_are_left_out(tmp_path):
    write_clip(tmp_path, "good.mp4", "a wave")
    write_clip(tmp_path, "nocap.mp4", None)
    write_clip(tmp_path, "empty.mp4", "   ")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "broken.txt").write_text("a caption for a broken file")
    write_image(tmp_path, "tiny.png", "too small", size=(8, 8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad.txt").write_text("a caption")
    (tmp_path / "orphan.txt").write_text("no media for this one")
    (tmp_path / "captions.jsonl").write_text(
        '{"file": "ghost.mp4", "caption": "x"}\nnot json\n{"file": "a"}\n'
    )
    report = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8)
    assert [i.name for i in report.usable] == ["good.mp4"]
    problems = {i.name: " ".join(i.problems) for i in report.items}
    assert "has no caption: add nocap.txt next to it" in problems["nocap.mp4"]
    assert "empty caption in empty.txt" in problems["empty.mp4"]
    assert "broken.mp4 is not a readable video" in problems["broken.mp4"]
    assert "smaller than 16 pixels" in problems["tiny.png"]
    assert "bad.png is not a readable image" in problems["bad.png"]
    assert all(p.endswith("It is left out.") for i in report.items for p in i.problems)
    notes = " ".join(report.notes)
    assert (
        "orphan.txt" in notes
        and "line 2 is not JSON" in notes
        and 'line 3 needs a "file" and a "caption"' in notes
    )
    assert "ghost.mp4" in notes
    assert "LEFT OUT" in report.text()


def test_a_folder_without_a_usable_item_is_refused(tmp_path):
    write_clip(tmp_path, "nocap.mp4", None)
    report = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8)
    with pytest.raises(ValidationError, match="no usable clip or image") as exc:
        report.require_usable()
    assert "nocap.mp4 has no caption" in str(exc.value)
    with pytest.raises(ValidationError, match="was not found"):
        check_dataset(tmp_path / "missing")


def test_short_and_fast_clips_are_cut_to_4k_plus_1_frames_at_the_model_rate(tmp_path):
    write_clip(tmp_path, "short.mp4", "short", frames=7)
    write_clip(tmp_path, "fast.mp4", "fast", frames=9, fps=16)
    report = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8)
    short, fast = (next(i for i in report.items if i.name == n) for n in ("short.mp4", "fast.mp4"))
    assert short.cut.frames == 5 and "trains on 5 (4k+1), not 9" in " ".join(short.notes)
    assert fast.cut.indices == [0, 2, 4, 6, 8]  # 16 fps → every 2nd frame for an 8 fps model
    assert "every 2th frame" in " ".join(fast.notes) or "every 2" in " ".join(fast.notes)
    plain = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8, resample_fps=False)
    assert next(i for i in plain.items if i.name == "fast.mp4").cut.indices == list(range(9))


def test_the_trigger_word_is_put_in_front_of_captions_that_lack_it(tmp_path):
    write_clip(tmp_path, "a.mp4", "a wave")
    write_clip(tmp_path, "b.mp4", "zqx style wave")
    report = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8, trigger="zqx")
    assert [i.caption for i in report.usable] == ["zqx, a wave", "zqx style wave"]


def test_frame_and_bucket_arithmetic():
    assert frame_indices(81, 16.0, 33, 16, True) == list(range(33))
    assert frame_indices(30, 30.0, 81, 16, True) == [round(i * 30 / 16) for i in range(13)]
    assert frame_indices(1, None, 33, 16, True) == [0]
    assert frame_indices(0, None, 33, 16, True) == []
    assert bucket_size(1920, 1080, 832, 480) == (832, 464)
    assert bucket_size(1080, 1920, 832, 480) == (464, 832)
    assert bucket_size(640, 640, 832, 480) == (624, 624)
    for w, h in [(1920, 1080), (333, 777), (50, 4000)]:
        bw, bh = bucket_size(w, h, 832, 480)
        assert bw % 16 == 0 and bh % 16 == 0 and bw * bh <= 832 * 480
