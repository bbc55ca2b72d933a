"""Training through the service: a background job with a snapshot, one run at a time, Stop and Resume."""

from __future__ import annotations

import time

import pytest
from trainkit import base_options

from studio.engine.memory import MemoryConfig
from studio.errors import ValidationError
from studio.service import Studio

pytestmark = pytest.mark.slow


def _wait(condition, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_trains_in_the_background_and_reports_its_progress(
    train_manager, train_settings, train_dataset
):
    studio = Studio(train_settings, train_manager)
    assert studio.training_snapshot() is None
    job = studio.start_training(base_options(name="job", steps=200, save_every=0), train_dataset)
    _wait(lambda: job.snapshot().step >= 2)
    with pytest.raises(ValidationError, match="is training; stop it first"):
        studio.start_training(base_options(name="other", steps=2), train_dataset)
    with pytest.raises(ValidationError, match="stop it first"):
        train_manager.load_model("wan2.2-ti2v-5b")  # no model switch mid-run
    assert studio.stop_training()
    assert job.wait(120)
    snap = studio.training_snapshot()
    assert snap.status == "stopped" and not snap.running
    assert 2 <= snap.step < 200
    assert set(snap.loss) == {"high", "low"} and len(snap.loss["high"]) == snap.step
    assert snap.val["high"][0][0] == 0  # the base model's validation loss at step 0
    assert len(snap.checkpoints) == 1 and snap.files and snap.run_dir
    assert not studio.stop_training()  # nothing runs now

    runs = studio.training_runs()
    assert any(record.name == "job" and record.status == "stopped" for _, record in runs)
    resumed = studio.start_training(resume=snap.run_dir, overrides={"steps": snap.step + 1})
    assert resumed.wait(240)
    final = studio.training_snapshot()
    assert final.status == "finished", final.error
    assert final.step == snap.step + 1 and final.summary["steps"] == snap.step + 1
    assert len(final.loss["high"]) == snap.step + 1  # the curve so far, then the new step
    assert [p.name for p in map(__import__("pathlib").Path, final.files)] == [
        "job_high_noise.safetensors", "job_low_noise.safetensors",
    ]  # fmt: skip


def test_a_failed_start_says_why_and_the_estimate_needs_no_model(train_manager, train_settings, tmp_path):
    studio = Studio(train_settings, train_manager)
    job = studio.start_training(base_options(name="nothing"), tmp_path)
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "failed" and "no usable clip" in snap.error
    estimate = studio.training_estimate(base_options(), MemoryConfig())
    assert estimate.request["mode"] == "gpu" and estimate.peak_vram_bytes > estimate.breakdown["lora_weights"]
