"""ZeroGPU wrapping: a no-op off Spaces, spaces.GPU with an estimated duration on ZeroGPU."""

from __future__ import annotations

import sys

from studio.engine.zerogpu import MAX_S, MIN_S, gpu_seconds, on_gpu
from studio.stack.schema import RenderSettings


def test_duration_grows_with_frames_steps_and_cfg_within_bounds():
    small = RenderSettings(width=832, height=480, frames=33, steps=4, guidance=1.0)
    assert gpu_seconds("wan2.2-i2v-a14b", small) == MIN_S
    base = RenderSettings(width=832, height=480, frames=81, steps=40, guidance=3.5)
    longer = base.model_copy(update={"frames": 121})
    no_cfg = base.model_copy(update={"guidance": 1.0})
    assert gpu_seconds("wan2.2-i2v-a14b", longer) > gpu_seconds("wan2.2-i2v-a14b", base)
    assert gpu_seconds("wan2.2-i2v-a14b", no_cfg) < gpu_seconds("wan2.2-i2v-a14b", base)
    assert gpu_seconds("wan2.2-ti2v-5b", base) < gpu_seconds("wan2.2-i2v-a14b", base)
    huge = RenderSettings(width=1280, height=720, frames=241, steps=200, guidance=5)
    assert gpu_seconds("wan2.2-i2v-a14b", huge) == MAX_S


def test_off_zerogpu_the_function_is_unchanged(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def work(x):
        return x + 1

    assert on_gpu(work, duration=lambda *a: 60) is work


def test_on_zerogpu_the_function_runs_under_spaces_gpu(monkeypatch, tmp_path):
    # The real `spaces` package only works on Hugging Face's hardware; this stand-in has its API.
    (tmp_path / "spaces.py").write_text(
        "calls = []\n"
        "def GPU(duration):\n"
        "    def wrap(fn):\n"
        "        def run(*args, **kwargs):\n"
        "            calls.append(duration(*args, **kwargs))\n"
        "            return fn(*args, **kwargs)\n"
        "        return run\n"
        "    return wrap\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    wrapped = on_gpu(lambda x: x * 2, duration=lambda x: 100 + x)
    assert wrapped(5) == 10
    assert sys.modules["spaces"].calls == [105]
