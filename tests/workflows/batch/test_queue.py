"""The app's scene queue: editor state in, edits, import/export, and a fresh queue object reading it back."""

from __future__ import annotations

import json
import zipfile

import pytest

from studio.errors import ValidationError
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.workflows.batch.queue import SceneQueue, state_rows


@pytest.fixture()
def queue(tmp_path, lora_dir) -> SceneQueue:
    return SceneQueue(tmp_path / "outputs" / "batch", [lora_dir])


def _editor(make_lora, lora_dir, prompt="a fox", seed=5):
    path = make_lora("style.safetensors")
    settings = RenderSettings(prompt=prompt, width=32, height=32, frames=1, steps=2, seed=seed)
    return settings, Stack(entries=[StackEntry.single(path, 0.7, 0.3, name="style")])


def test_the_editor_becomes_a_scene_and_the_queue_survives_a_restart(
    queue, make_lora, lora_dir, start_image, demo_defaults
):
    settings, stack = _editor(make_lora, lora_dir)
    queue.add(start_image, settings, stack)
    queue.add(start_image, settings.model_copy(update={"prompt": "a fox", "seed": None}), stack)
    reopened = SceneQueue(queue.folder, [lora_dir])  # what the app reads after a restart
    scenes = reopened.load().scenes
    assert [s.name for s in scenes] == ["a fox", "a fox (2)"]
    assert scenes[0].seed == 5 and scenes[1].seed is None
    assert scenes[0].loras == [
        {"path": "style.safetensors", "name": "style", "weight": 0.7, "applies_to": "high_noise"},
        {"path": "style.safetensors", "name": "style", "weight": 0.3, "applies_to": "low_noise"},
    ]
    assert scenes[0].image == scenes[1].image and (queue.folder / scenes[0].image).is_file()  # stored once
    assert len(list(queue.images.iterdir())) == 1
    (job, _) = reopened.batch(model_defaults=demo_defaults).jobs
    assert (job.settings.width, job.settings.steps, job.settings.prompt, job.settings.seed) == (
        32,
        2,
        "a fox",
        5,
    )
    weights = sorted((e.applies_to()[0], e.weight(e.applies_to()[0])) for e in job.stack.entries)
    assert weights == [("high", 0.7), ("low", 0.3)]


def test_reorder_edit_duplicate_remove(queue, make_lora, lora_dir, start_image):
    settings, stack = _editor(make_lora, lora_dir)
    for prompt in ("one", "two", "three"):
        queue.add(start_image, settings.model_copy(update={"prompt": prompt}), stack)
    assert [s.name for s in queue.move(2, -1).scenes] == ["one", "three", "two"]
    assert [s.name for s in queue.move(0, -5).scenes] == ["one", "three", "two"]  # clamped
    edited = queue.edit(1, name="finale", prompt="it ends", seed=None, repeat=3).scenes[1]
    assert (edited.name, edited.prompt, edited.seed, edited.repeat) == ("finale", "it ends", None, 3)
    assert [s.name for s in queue.duplicate(0).scenes] == ["one", "one copy", "finale", "two"]
    assert [s.name for s in queue.remove(1).scenes] == ["one", "finale", "two"]
    with pytest.raises(ValidationError, match="Another scene is named 'two'"):
        queue.edit(0, name="two")
    with pytest.raises(
        ValidationError, match=r"scene 1 \('one'\): repeat: Input should be greater than or equal to 1"
    ):
        queue.edit(0, repeat=0)
    with pytest.raises(ValidationError, match="no longer in the queue"):
        queue.remove(7)
    new_settings = settings.model_copy(update={"prompt": "replaced", "steps": 3})
    replaced = queue.replace_from_editor(1, start_image, new_settings, Stack()).scenes[1]
    assert (replaced.name, replaced.prompt, replaced.repeat, replaced.loras) == ("finale", "replaced", 3, [])
    assert replaced.settings.steps == 3
    assert queue.clear().scenes == []


def test_export_and_import_a_zip_with_its_images(queue, make_lora, lora_dir, start_image, tmp_path):
    settings, stack = _editor(make_lora, lora_dir)
    queue.add(start_image, settings, stack)
    archive = queue.export_zip(tmp_path / "queue.zip")
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert names[0].startswith("images/") and names[1] == "scenes.json"
        assert json.loads(z.read("scenes.json"))["kind"] == "wan-lora-studio/scenes"
    with pytest.raises(ValidationError, match="already exists"):
        queue.export_zip(archive)
    other = SceneQueue(tmp_path / "elsewhere", [lora_dir])
    imported = other.import_file(archive)
    assert [s.name for s in imported.scenes] == ["a fox"]
    assert (other.folder / imported.scenes[0].image).read_bytes() == (
        queue.folder / queue.load().scenes[0].image
    ).read_bytes()
    assert [s.name for s in other.import_file(archive).scenes] == ["a fox", "a fox (2)"]  # added, renamed
    assert [s.name for s in other.import_file(archive, replace=True).scenes] == ["a fox"]


def test_imports_that_cannot_work_are_sentences(queue, tmp_path, start_image):
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(ValidationError, match="is not a zip file"):
        queue.import_file(bad_zip)
    lonely = tmp_path / "upload" / "scenes.json"
    lonely.parent.mkdir()
    lonely.write_text(
        json.dumps(
            {"kind": "wan-lora-studio/scenes", "version": 1, "scenes": [{"name": "a", "image": "a.png"}]}
        )
    )
    with pytest.raises(
        ValidationError, match=r"scene 1 \('a'\): image: a.png is not next to the uploaded file"
    ):
        queue.import_file(lonely)
    escaping = tmp_path / "escape.zip"
    with zipfile.ZipFile(escaping, "w") as z:
        z.writestr(
            "scenes.json",
            json.dumps(
                {
                    "kind": "wan-lora-studio/scenes",
                    "version": 1,
                    "scenes": [{"name": "a", "image": "../x.png"}],
                }
            ),
        )
    with pytest.raises(ValidationError, match="is not in the zip"):
        queue.import_file(escaping)
    start_image.save(lonely.parent / "a.png")  # a scene file with its image beside it imports fine
    assert [s.name for s in queue.import_file(lonely).scenes] == ["a"]
    assert queue.load().scenes[0].image.startswith("images/")


def test_the_table_shows_each_scene_with_its_loras_and_status(queue, make_lora, lora_dir, start_image):
    settings, stack = _editor(make_lora, lora_dir)
    queue.add(start_image, settings, stack)
    queue.add(start_image, settings.model_copy(update={"prompt": "x" * 80, "seed": None}), Stack())
    rows = state_rows(queue.load(), None)
    assert rows[0] == [1, "a fox", "a fox", "style 0.7, style 0.3", 5, 1, "not run"]
    assert (
        rows[1][2].endswith("…")
        and len(rows[1][2]) == 60
        and rows[1][3:] == ["no LoRAs", "random", 1, "not run"]
    )
