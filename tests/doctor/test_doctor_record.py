"""The doctor's summary line in the render record (sidecar and MP4), computed after the render."""

from __future__ import annotations

import json

from doctor_helpers import TINY, lora_tensors, scaled_up, single, stack_of

from studio.media.probe import read_video_metadata


def test_the_render_record_has_the_doctor_line(studio, write, start_image):
    base = lora_tensors(seed=1)
    a = write("style.safetensors", base)
    b = write("anti_style.safetensors", scaled_up(base, -1.0))
    stack = stack_of(single(a), single(b, 0.5, 0.5))
    saved = studio.render(start_image, TINY, stack)
    line = json.loads(saved.sidecar.read_text())["doctor"]
    assert line == studio.doctor(TINY, stack, read_library=False).summary()
    assert line.startswith("doctor: style high") and "anti_style + " not in line
    assert "style + anti_style (high): conflict (cos -1.00)" in line
    assert read_video_metadata(saved.video)["doctor"] == line
