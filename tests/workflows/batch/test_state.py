"""The batch state: what a re-run keeps, renders again and cleans up; atomic writes; one run per folder."""

from __future__ import annotations

import json

import pytest

from studio.errors import ValidationError
from studio.workflows.batch.scenes import load_batch
from studio.workflows.batch.state import STATE_FILE, StateFile, batch_lock


@pytest.fixture()
def batch_of(write_scenes, demo_defaults):
    def _make(*prompts, seed=None):
        scenes = [{"name": f"s{i}", "image": "images/start.png", "prompt": p} for i, p in enumerate(prompts)]
        if seed is not None:
            for scene in scenes:
                scene["seed"] = seed
        return load_batch(write_scenes(scenes), model_defaults=demo_defaults)

    return _make


def _publish(out, stem, text="x"):
    for suffix in (".mp4", ".json", ".start.png"):
        (out / f"{stem}{suffix}").write_text(text)


def _finish(sf, job_id):
    stem = sf.state.job(job_id).stem
    _publish(sf.out_dir, stem)
    out = sf.out_dir
    sf.mark_running(job_id)
    sf.mark_done(
        job_id,
        video=out / f"{stem}.mp4",
        sidecar=out / f"{stem}.json",
        start_image=out / f"{stem}.start.png",
        file_reads=1,
        seconds=0.5,
    )


def test_a_new_state_lists_every_job_pending_and_keeps_the_seeds_it_drew(batch_of, tmp_path):
    batch = batch_of("a", "b")
    out = tmp_path / "out"
    sf = StateFile.open(out, batch)
    assert [(j.id, j.status, j.stem) for j in sf.state.jobs] == [
        ("01-s0", "pending", "01-s0"),
        ("02-s1", "pending", "02-s1"),
    ]
    on_disk = json.loads((out / STATE_FILE).read_text())
    assert on_disk["kind"] == "wan-lora-studio/batch-state" and len(on_disk["jobs"]) == 2
    seeds = [j.seed for j in sf.state.jobs]
    assert [j.seed for j in StateFile.open(out, batch_of("a", "b")).state.jobs] == seeds
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and "partial" in p.name] == []


def test_every_change_is_on_disk_at_once(batch_of, tmp_path):
    sf = StateFile.open(tmp_path / "out", batch_of("a"))
    sf.mark_running("01-s0", "worker 1")
    job = json.loads(sf.path.read_text())["jobs"][0]
    assert (job["status"], job["attempts"], job["worker"]) == ("running", 1, "worker 1")
    sf.mark_failed("01-s0", "The LoRA x was not found.")
    job = json.loads(sf.path.read_text())["jobs"][0]
    assert (job["status"], job["error"]) == ("failed", "The LoRA x was not found.")


def test_a_rerun_keeps_done_jobs_and_renders_the_rest_again(batch_of, tmp_path):
    out = tmp_path / "out"
    sf = StateFile.open(out, batch_of("a", "b", "c", "d"))
    _finish(sf, "01-s0")
    _finish(sf, "04-s3")
    sf.mark_failed("02-s1", "out of memory")
    sf.mark_running("03-s2")  # ... and the process dies here, mid-render of 03:
    _publish(out, "03-s2")  # its MP4 (and more) were already published
    (out / ".03-s2.mp4.partial-k3j2").write_text("half a video")
    (out / f".{STATE_FILE}.partial-zz").write_text("{")
    (out / "04-s3.mp4").unlink()  # someone deleted a finished video
    again = StateFile.open(out, batch_of("a", "b", "c", "d"))
    status = {j.id: j.status for j in again.state.jobs}
    assert status == {"01-s0": "done", "02-s1": "pending", "03-s2": "pending", "04-s3": "pending"}
    assert [j.id for j in again.state.todo()] == ["02-s1", "03-s2", "04-s3"]
    assert again.state.job("03-s2").attempts == 1 and again.state.job("03-s2").stem == "03-s2"
    left = sorted(p.name for p in out.iterdir())
    assert left == ["01-s0.json", "01-s0.mp4", "01-s0.start.png", STATE_FILE]


def test_an_edited_scene_renders_again_under_a_new_name_and_the_old_video_stays(batch_of, tmp_path):
    out = tmp_path / "out"
    sf = StateFile.open(out, batch_of("a", "b"))
    _finish(sf, "01-s0")
    _finish(sf, "02-s1")
    again = StateFile.open(out, batch_of("a", "b, edited"))
    first, second = again.state.jobs
    assert (first.status, first.stem) == ("done", "01-s0")
    assert (second.status, second.stem) == ("pending", "02-s1-v2")
    assert (out / "02-s1.mp4").exists()  # nothing is overwritten or deleted


def test_a_scene_dropped_and_added_again_never_deletes_the_old_video(batch_of, tmp_path):
    out = tmp_path / "out"
    sf = StateFile.open(out, batch_of("a", "b"))
    _finish(sf, "02-s1")
    StateFile.open(out, batch_of("a"))  # scene 2 left the file (its video stays on disk)
    back = StateFile.open(out, batch_of("a", "b again"))
    assert back.state.job("02-s1").stem == "02-s1-v2"
    assert (out / "02-s1.mp4").read_text() == "x"


def test_a_damaged_state_file_is_a_sentence(batch_of, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE_FILE).write_text("{not json")
    with pytest.raises(ValidationError, match=r"is damaged\. Move it away"):
        StateFile.open(out, batch_of("a"))


def test_one_run_per_folder(tmp_path):
    with (
        batch_lock(tmp_path / "out"),
        pytest.raises(ValidationError, match="Another batch is rendering into"),
        batch_lock(tmp_path / "out"),
    ):
        pass
    with batch_lock(tmp_path / "out"):  # released when the first run ends
        pass
