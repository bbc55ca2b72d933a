"""The trainer on the demo model: the loss falls, each expert learns only its own timesteps, resume is exact."""

from __future__ import annotations

import threading

import pytest
import torch
from trainkit import base_options, write_clip

from studio.errors import ValidationError
from studio.training import state
from studio.training.trainer import StopToken, Trainer

pytestmark = pytest.mark.slow  # one shared run of 40 steps per expert (a few seconds on a free CPU)

BOUNDARY_T = 875.0  # the demo model's boundary_ratio 0.875, in timesteps


def test_the_training_loss_goes_down_for_both_experts(trained):
    result = trained.result
    assert result.steps == 40 and not result.stopped
    for expert in ("high", "low"):
        assert len(result.loss[expert]) == 40
        assert result.loss_last(expert) < 0.9 * result.loss_first(expert), expert


def test_the_trained_pair_has_a_lower_validation_loss_than_the_base_model(trained):
    result = trained.result
    assert set(result.val_base) == {"high", "low"}
    for expert in ("high", "low"):
        assert result.val_trained[expert] < result.val_base[expert], expert
    summary = result.summary()
    assert summary["val_loss"]["high"] == {
        "base": result.val_base["high"],
        "trained": result.val_trained["high"],
    }
    assert summary["loss_last"] < summary["loss_first"]


def test_each_expert_trains_only_on_its_side_of_the_boundary(trained):
    seen = trained.trainer.timesteps
    assert len(seen["high"]) == len(seen["low"]) == 40
    assert min(seen["high"]) >= BOUNDARY_T and max(seen["high"]) <= 1000.0
    assert max(seen["low"]) < BOUNDARY_T and min(seen["low"]) >= 0.0
    # Both ranges are really covered, not a sliver next to the boundary.
    assert max(seen["high"]) > 960 and min(seen["low"]) < 500
    # The expert that stepped got a gradient; the other expert's LoRA got none at all.
    assert len(trained.grads) == 80
    for record in trained.grads:
        other = "low" if record["stepped"] == "high" else "high"
        assert record["has_grad"][record["stepped"]], record
        assert record["none"][other], record


def test_progress_events_count_down_to_the_end(trained):
    steps = [e for e in trained.events if e.kind == "step"]
    assert len(steps) == 80 and steps[-1].step == 40 and steps[-1].total == 40
    assert steps[-1].eta_s == 0.0 and steps[0].eta_s > 0.0
    assert [e.step for e in trained.events if e.kind == "checkpoint"] == [20, 40]
    assert trained.events[-1].kind == "done"
    record = state.load_run(trained.result.run_dir)
    assert record.status == "finished" and [c.step for c in record.checkpoints] == [20, 40]
    assert record.progress.loss == trained.result.loss


def test_a_stopped_run_resumes_on_the_same_loss_curve(train_manager, train_dataset, trained):
    stop = StopToken()

    def stop_after_two(event):
        if event.kind == "step" and event.step == 2 and event.expert == "low":
            stop.stop()

    first = Trainer(
        train_manager, base_options(name="wave-resume", steps=4, save_every=0), dataset=train_dataset,
        on_event=stop_after_two,
    ).run(stop)  # fmt: skip
    assert first.stopped and first.steps == 2
    assert state.load_run(first.run_dir).status == "stopped"
    assert train_manager.training is None  # the adapters left the model
    # A crash while writing a later checkpoint leaves a partial folder: it is ignored and removed.
    partial = first.run_dir / "checkpoints" / ".step-000003.partial-x"
    partial.mkdir()
    (partial / "state.safetensors").write_bytes(b"half")

    second = Trainer(train_manager, resume=first.run_dir, overrides={"steps": 4}).run()
    assert not partial.exists()
    assert second.steps == 4 and not second.stopped
    for expert in ("high", "low"):  # exactly the uninterrupted run's first four steps
        assert second.loss[expert] == trained.result.loss[expert][:4], expert


def test_resume_refuses_to_change_what_makes_the_run(train_manager, trained):
    with pytest.raises(ValidationError, match="rank"):
        Trainer(train_manager, resume=trained.result.run_dir, overrides={"rank": 4, "steps": 50}).run()


def test_a_second_run_with_a_taken_name_is_refused(train_manager, train_dataset, trained):
    with pytest.raises(ValidationError, match="exists already"):
        Trainer(train_manager, base_options(), dataset=train_dataset).run()


def test_a_dataset_without_usable_items_is_refused(train_manager, tmp_path):
    write_clip(tmp_path, "nocap.mp4", None)
    with pytest.raises(ValidationError, match="no usable clip"):
        Trainer(train_manager, base_options(name="empty"), dataset=tmp_path).run()
    assert train_manager.training is None


def test_renders_run_between_training_steps_and_see_no_training_adapter(
    train_manager, train_dataset, start_image
):
    from studio.engine.manager import RenderRequest
    from studio.stack.schema import RenderSettings

    settings = RenderSettings(
        prompt="a red wave", width=32, height=32, frames=9, steps=2, guidance=1.0, seed=5
    )
    request = RenderRequest(image=start_image, settings=settings, decode=False)
    before = train_manager.render(request).latents
    stop, started, seen = StopToken(), threading.Event(), []

    def on_event(event):
        if event.kind == "step":
            seen.append(event.step)
            started.set()

    trainer = Trainer(
        train_manager, base_options(name="wave-busy", steps=500), dataset=train_dataset, on_event=on_event
    )
    thread = threading.Thread(target=lambda: trainer.run(stop))
    thread.start()
    try:
        assert started.wait(120)
        during = train_manager.render(request).latents
        step_at_render_end = trainer.progress.step
        while trainer.progress.step <= step_at_render_end + 1 and thread.is_alive():
            threading.Event().wait(0.01)
    finally:
        stop.stop()
        thread.join(120)
    assert step_at_render_end < 500  # the render did not wait for the run
    assert seen[-1] > step_at_render_end  # and the run went on after it
    assert torch.equal(before, during)  # the training adapter was off during the render
