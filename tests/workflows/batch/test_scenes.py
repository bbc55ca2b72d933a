"""The scene file: resolution into jobs (settings order, repeats, relative images, presets) and every error naming its scene."""

from __future__ import annotations

import json

import pytest

from studio.errors import ValidationError
from studio.stack.schema import Stack, StackEntry
from studio.workflows.batch.scenes import (
    SceneFile,
    items_from_stack,
    load_batch,
    load_scene_file,
    parse_scene_file,
    resolve_scenes,
)
from studio.workflows.presets.schema import PresetSettings
from studio.workflows.presets.store import PresetStore


def test_jobs_in_order_with_settings_merged_model_then_defaults_then_scene(
    write_scenes, make_lora, lora_dir, demo_defaults
):
    make_lora("style.safetensors", seed=1)
    path = write_scenes(
        [
            {"name": "Intro shot", "image": "images/start.png", "prompt": "walks", "seed": 7, "repeat": 2,
             "loras": [{"path": "style.safetensors", "weight": 0.8, "applies_to": "high_noise"}],
             "settings": {"steps": 3}},
            {"name": "close", "image": "images/start.png", "prompt": "smiles"},
        ],
        defaults={"width": 32, "height": 32, "frames": 1, "steps": 2, "guidance": 1.0},
    )  # fmt: skip
    batch = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir])
    assert [j.id for j in batch.jobs] == ["01-intro-shot-r1", "01-intro-shot-r2", "02-close"]
    first, second, third = batch.jobs
    assert (first.settings.seed, second.settings.seed, third.settings.seed) == (7, 8, None)
    assert (first.settings.steps, third.settings.steps) == (3, 2)  # the scene's value beats the defaults
    assert first.settings.guidance == 1.0 and first.settings.shift == demo_defaults["shift"]
    assert first.settings.prompt == "walks" and third.settings.prompt == "smiles"
    assert first.image == (path.parent / "images" / "start.png").resolve()
    entry = first.stack.entries[0]
    assert (entry.weight_high, entry.weight_low, entry.high.path, entry.low) == (
        0.8,
        0.0,
        "style.safetensors",
        None,
    )
    assert third.stack == Stack()
    # The fingerprint covers what makes the video: same scene, other seed → another fingerprint.
    assert len({first.fingerprint, second.fingerprint, third.fingerprint}) == 3
    again = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir])
    assert [j.fingerprint for j in again.jobs] == [j.fingerprint for j in batch.jobs]


def test_a_preset_by_name_brings_its_stack_and_settings_under_the_scene_settings(
    write_scenes, make_lora, lora_dir, tmp_path, demo_defaults
):
    make_lora("speed.safetensors", seed=2)
    store = PresetStore(tmp_path / "user_presets", None, roots=[lora_dir])
    store.save_stack("Fast", Stack(entries=[StackEntry.single(lora_dir / "speed.safetensors", 1.0, 0.5)]))
    preset = store.load("Fast").model_copy(update={"settings": PresetSettings(steps=4, shift=3.0)})
    store.save(preset, overwrite=True)
    path = write_scenes(
        [{"name": "a", "image": "images/start.png", "preset": "Fast", "settings": {"steps": 1}}],
        defaults={"width": 32, "height": 32, "frames": 1, "shift": 8.0},
    )
    (job,) = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir], presets=store).jobs
    assert (job.settings.steps, job.settings.shift) == (1, 3.0)  # scene > preset > defaults
    assert [(e.weight_high, e.weight_low) for e in job.stack.entries] == [(1.0, 0.5)]


@pytest.mark.parametrize(
    ("scene", "message"),
    [
        ({"setings": {}}, r"scene 2 \('second'\): setings: is not a known field"),
        ({"settings": {"frames": 6}}, r"scene 2 \('second'\): settings.frames: must be 4k\+1"),
        ({"settings": {"width": 33}}, r"scene 2 \('second'\): settings.width: must be a multiple of 16"),
        ({"seed": -1}, r"scene 2 \('second'\): seed: seed must be between 0"),
        ({"repeat": 0}, r"scene 2 \('second'\): repeat: Input should be greater than or equal to 1"),
        ({"image": "images/nothere.png"}, r"scene 2 \('second'\): image: .*nothere.png was not found"),
        (
            {"loras": [{"path": "a.safetensors", "applies_to": "middle"}]},
            r"scene 2 \('second'\): loras: .*applies_to",
        ),
        (
            {"loras": [{"file": "a.safetensors"}]},
            r"scene 2 \('second'\): loras: .*file: is not a known field",
        ),
        ({"loras": [], "preset": "x"}, r"scene 2 \('second'\): give either 'loras' or 'preset', not both"),
        (
            {"preset": "No such preset"},
            r"scene 2 \('second'\): preset: There is no preset named 'No such preset'",
        ),
        ({"name": "First"}, "two scenes are named 'First'"),
    ],
)
def test_every_error_names_the_scene_and_the_field(
    write_scenes, demo_defaults, lora_dir, tmp_path, scene, message
):
    good = {"name": "first", "image": "images/start.png"}
    second = {"name": "second", "image": "images/start.png", **scene}
    path = write_scenes([good, second])
    store = PresetStore(tmp_path / "presets", None)
    with pytest.raises(ValidationError, match=message):
        load_batch(path, model_defaults=demo_defaults, roots=[lora_dir], presets=store)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"kind": "wan-lora-studio/preset", "scenes": []}', "is not a scene file"),
        (
            '{"kind": "wan-lora-studio/scenes", "version": 2, "scenes": []}',
            "version 2; this studio reads version 1",
        ),
        ('{"kind": "wan-lora-studio/scenes", "version": 1, "scene": []}', "scene: is not a known field"),
        (
            '{"kind": "wan-lora-studio/scenes", "version": 1, "defaults": {"frames": 2}}',
            "defaults.frames: must be 4k",
        ),
        (
            '{"kind": "wan-lora-studio/scenes", "version": 1, "scenes": [{"image": "a.png"}]}',
            "scene 1: name: is required",
        ),
    ],
)
def test_file_level_errors(text, message):
    with pytest.raises(ValidationError, match=message):
        parse_scene_file(text)


def test_an_empty_batch_and_a_missing_file_are_refused(tmp_path, demo_defaults):
    with pytest.raises(ValidationError, match="has no scenes"):
        resolve_scenes(SceneFile(), tmp_path, model_defaults=demo_defaults)
    with pytest.raises(ValidationError, match="was not found"):
        load_scene_file(tmp_path / "nothing.json")


def test_a_damaged_start_image_is_a_bad_file(write_scenes, scene_dir, demo_defaults):
    (scene_dir / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    path = write_scenes([{"name": "a", "image": "images/broken.png"}])
    with pytest.raises(ValidationError, match=r"scene 1 \('a'\): image: The start image is not a picture"):
        load_batch(path, model_defaults=demo_defaults)


def test_lora_paths_are_relative_to_a_lora_folder_or_the_scene_file(
    write_scenes, scene_dir, make_lora, lora_dir, demo_defaults
):
    from studio.loras.sources import resolve_source

    make_lora("style.safetensors")
    (scene_dir / "local.safetensors").write_bytes((lora_dir / "style.safetensors").read_bytes())
    path = write_scenes(
        [
            {
                "name": "a",
                "image": "images/start.png",
                "loras": [{"path": "style.safetensors"}, {"path": "local.safetensors"}],
            }
        ]
    )
    (job,) = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir]).jobs
    roots = [lora_dir, scene_dir.resolve()]
    found = [resolve_source(e.high, roots) for e in job.stack.entries]
    assert found == [(lora_dir / "style.safetensors").resolve(), (scene_dir / "local.safetensors").resolve()]


def test_items_from_a_stack_round_trip_through_the_guide_parser(
    write_scenes, make_lora, lora_dir, demo_defaults
):
    a, b, c = (make_lora(f"{n}.safetensors", seed=i) for i, n in enumerate("abc"))
    stack = Stack(
        entries=[
            StackEntry.single(a, 0.7),  # one file, equal weights: one "both" item
            StackEntry.single(b, 0.9, 0.3),  # unequal weights: one item per expert
            StackEntry.pair(a, c, 0.5, 0.6, name="pair"),  # a pair: one item per expert
            StackEntry.single(c, 1.0, enabled=False),  # off: not in the scene
        ]
    )
    items = items_from_stack(stack, [lora_dir])
    assert [(i["path"], i["applies_to"], i["weight"]) for i in items] == [
        ("a.safetensors", "both", 0.7),
        ("b.safetensors", "high_noise", 0.9),
        ("b.safetensors", "low_noise", 0.3),
        ("a.safetensors", "high_noise", 0.5),
        ("c.safetensors", "low_noise", 0.6),
    ]
    path = write_scenes([{"name": "s", "image": "images/start.png", "loras": items}])
    (job,) = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir]).jobs

    def per_expert(s: Stack):
        out = {}
        for e in s.active():
            for expert in e.applies_to():
                key = (expert, e.source(expert).path.split("/")[-1])
                out[key] = out.get(key, 0.0) + e.weight(expert)
        return out

    assert per_expert(job.stack) == per_expert(stack)


def test_the_file_form_round_trips(write_scenes, scene_dir):
    path = write_scenes([{"name": "a", "image": "images/start.png", "seed": 3, "settings": {"fps": 8}}])
    loaded = load_scene_file(path)
    assert parse_scene_file(loaded.to_json()) == loaded
    data = json.loads(loaded.to_json())
    assert data["scenes"] == [
        {"name": "a", "image": "images/start.png", "prompt": "", "settings": {"fps": 8}, "seed": 3}
    ]


def test_a_schedule_on_an_item_reaches_the_stack_where_the_studio_has_schedules(
    write_scenes, lora_dir, demo_defaults
):
    from studio.workflows.presets.formats import GuideLora

    item = {"path": "a.safetensors", "name": "A", "applies_to": "low_noise", "schedule": "1>0"}
    path = write_scenes([{"name": "ramp", "image": "images/start.png", "loras": [item]}])
    if (
        "schedule" not in GuideLora.model_fields
    ):  # per-step schedules not in this studio: a sentence, not a silent drop
        with pytest.raises(
            ValidationError, match=r"scene 1 \('ramp'\): loras.0.schedule: per-step schedules are not"
        ):
            load_batch(path, model_defaults=demo_defaults, roots=[lora_dir])
        return
    (job,) = load_batch(path, model_defaults=demo_defaults, roots=[lora_dir]).jobs
    entry = job.stack.entries[0]
    assert entry.schedule_low is not None and entry.schedule_high is None
    assert (
        items_from_stack(job.stack, [lora_dir])[0]["schedule"]
        == entry.model_dump(mode="json")["schedule_low"]
    )
