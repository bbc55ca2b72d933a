"""Preset files: the schema (round trip, every validation error, path escapes, the guide's list),
the store (save/load/rename/duplicate/delete/import/export, no overwrite without confirmation),
the shipped presets, and atomic saves under a real crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.errors import ValidationError
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry
from studio.workflows.presets.errors import PresetExists, PresetNotFound, PresetReadOnly
from studio.workflows.presets.formats import preset_from_data
from studio.workflows.presets.schema import (
    PRESET_KIND,
    SHIPPED_DIR,
    SLOT_MESSAGE,
    Preset,
    PresetSettings,
    load_preset,
    parse_preset,
)
from studio.workflows.presets.store import PresetStore, slugify

ROOT = Path(__file__).resolve().parents[2]
LIGHTX2V = "lightx2v/Wan2.2-Distill-Loras"
HIGH_FILE = "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors"
LOW_FILE = "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"


def full_preset_data() -> dict:
    return {
        "kind": PRESET_KIND,
        "version": 2,
        "name": "My stack",
        "description": "everything a preset can hold",
        "model": "wan2.2-i2v-a14b",
        "entries": [
            {
                "id": "speed",
                "name": "speed",
                "role": "speed",
                "high": {"repo": LIGHTX2V, "file": HIGH_FILE, "revision": "main", "sha256": "a" * 64},
                "low": {"repo": LIGHTX2V, "file": LOW_FILE},
                "weight_high": 1.0,
                "weight_low": 1.0,
            },
            {
                "id": "style",
                "name": "Anime",
                "high": {"path": "styles/anime.safetensors"},
                "low": {"path": "styles/anime.safetensors"},
                "weight_high": 0.8,
                "weight_low": 0.7,
                "enabled": False,
            },
            {
                "id": "character",
                "name": "Character",
                "role": "character",
                "weight_high": 1.0,
                "weight_low": 1.1,
                "range_high": [1.0, 1.1],
                "range_low": [1.0, 1.1],
                "hint": "pick your character",
            },
        ],
        "settings": {"steps": 4, "guidance": 1.0, "guidance_low": 1.0, "shift": 5.0, "frames": 81},
    }


@pytest.fixture()
def store(tmp_path, lora_dir) -> PresetStore:
    return PresetStore(tmp_path / "user-presets", SHIPPED_DIR, roots=[lora_dir])


# ----------------------------------------------------------------------------- schema


def test_a_preset_round_trips_through_its_file_form():
    preset = parse_preset(full_preset_data())
    again = parse_preset(preset.to_json())
    assert again == preset
    assert json.loads(preset.to_json()) == preset.to_dict()
    assert preset.to_dict()["entries"][1]["enabled"] is False
    assert "role" not in preset.to_dict()["entries"][1]  # unset values are left out of the file


def test_a_preset_splits_into_the_stack_and_the_open_slots():
    preset = parse_preset(full_preset_data())
    split = preset.to_stack()
    assert [e.id for e in split.stack.entries] == ["speed", "style"]
    assert split.stack.entries[0].high == LoraSource(
        repo=LIGHTX2V, file=HIGH_FILE, revision="main", sha256="a" * 64
    )
    assert split.stack.entries[0].is_pair
    [slot] = split.slots
    assert (slot.entry_id, slot.role, slot.position, slot.message) == (
        "character",
        "character",
        2,
        SLOT_MESSAGE,
    )
    assert split.messages() == ["Character: choose a LoRA for this slot."]
    assert preset.stack == split.stack and not split.complete
    entry = slot.fill("/loras/me.safetensors")
    assert (entry.id, entry.name, entry.weight_high, entry.weight_low) == ("character", "me", 1.0, 1.1)
    assert entry.high == entry.low == LoraSource(path="/loras/me.safetensors")


def test_a_quality_slot_fills_the_low_noise_expert_only():
    preset = parse_preset(
        {
            "name": "q",
            "entries": [
                {"id": "q", "name": "Quality", "role": "quality", "weight_high": 0, "weight_low": 0.4}
            ],
        }
    )
    entry = preset.slots[0].fill("hps.safetensors")
    assert entry.high is None and entry.low == LoraSource(path="hps.safetensors")
    pair = preset.slots[0].fill("a_high.safetensors", "a_low.safetensors")
    assert pair.high.path == "a_high.safetensors" and pair.low.path == "a_low.safetensors"
    filled = preset.fill_slot("q", "hps.safetensors")
    assert filled.stack.entries[0].applies_to() == ["low"] and filled.slots == []


def test_settings_apply_over_the_current_values_and_read_like_a_mapping():
    preset = parse_preset(full_preset_data())
    base = RenderSettings(prompt="a cat", steps=40, guidance=3.5, guidance_low=3.0, seed=3)
    applied = preset.apply_settings(base)
    assert (applied.steps, applied.guidance, applied.guidance_low, applied.shift) == (4, 1.0, 1.0, 5.0)
    assert (applied.prompt, applied.seed, applied.width) == ("a cat", 3, 832)
    values = {"steps": 40, "width": 64}
    values.update(preset.settings)  # what studio.cli does with --preset
    assert values == {
        "steps": 4,
        "width": 64,
        "guidance": 1.0,
        "guidance_low": 1.0,
        "shift": 5.0,
        "frames": 81,
    }
    assert len(PresetSettings()) == 0 and "steps" in preset.settings


def test_a_version_1_file_is_read_and_converted():
    old = {
        "version": 1,
        "name": "old",
        "stack": {"version": 1, "entries": [{"id": "a", "name": "a", "high": {"path": "a.safetensors"}}]},
        "settings": {"steps": 8},
    }
    preset = parse_preset(old)
    assert preset.version == 2 and preset.stack.entries[0].high.path == "a.safetensors"
    assert preset.settings.steps == 8


def mutate(data: dict, path: str, value) -> dict:
    """``data`` with ``value`` at a dotted ``path`` (list indexes as numbers); value None deletes."""
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key = int(last) if isinstance(target, list) else last
    if value is None:
        del target[key]
    else:
        target[key] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("name", "", "name: "),
        ("name", "a\x07b", "name: the preset name contains control characters"),
        ("colour", "red", "colour: is not a known field"),
        ("kind", "something/else", "kind: "),
        ("version", 3, "version: "),
        ("model", 5, "model: "),
        ("entries.0.weight_high", 20, "entries.0.weight_high: a LoRA weight must be between -10 and 10"),
        ("entries.1.weight_low", "heavy", "entries.1.weight_low: "),
        ("entries.0.id", "has space", "entries.0.id: "),
        ("entries.1.id", "speed", "two entries share an id"),
        ("entries.0.name", None, "entries.0.name: Field required"),
        ("entries.0.role", "villain", "entries.0.role: "),
        ("entries.0.strength", 1, "entries.0.strength: is not a known field"),
        (
            "entries.1.high.path",
            "anime.ckpt",
            "entries.1.high.path: the path 'anime.ckpt' is not a .safetensors file",
        ),
        ("entries.1.high.path", "a\\b.safetensors", "entries.1.high.path: use '/'"),
        ("entries.1.high.repo", "org/repo", "entries.1.high: give either a local 'path'"),
        ("entries.0.high.repo", "not a repo", "entries.0.high.repo: 'not a repo' is not a Hub repository id"),
        ("entries.0.high.file", "../x.safetensors", "entries.0.high.file: "),
        ("entries.0.high.revision", "a b", "entries.0.high.revision: "),
        ("entries.0.high.sha256", "abc", "entries.0.high.sha256: must be the file's sha256"),
        (
            "entries.2.range_high",
            [1.1, 1.0],
            "entries.2.range_high: the suggested range must go from low to high",
        ),
        ("entries.2.range_low", [1.0], "entries.2.range_low.1: Field required"),
        ("entries.2.weight_high", 0, None),  # still fine: weight on the low-noise expert
        ("settings.frames", 80, "settings.frames: must be 4k+1"),
        ("settings.steps", 0, "settings.steps: must be between 1 and 200"),
        ("settings.width", 100, "settings.width: must be a multiple of 16"),
        ("settings.guidance", 99, "settings.guidance: guidance must be between 0 and 30"),
        ("settings.prompt", "a cat", "settings.prompt: is not a known field"),
        ("entries", "not a list", "entries: "),
    ],
)
def test_each_validation_error_names_the_field(path, value, expected):
    data = mutate(full_preset_data(), path, value)
    if expected is None:
        parse_preset(data)
        return
    with pytest.raises(ValidationError) as err:
        parse_preset(data, what="preset mine.json")
    message = str(err.value)
    assert message.startswith("Invalid preset mine.json: ")
    assert expected in message, message


def test_a_slot_needs_a_weight_and_bad_json_is_reported_with_its_position():
    data = mutate(full_preset_data(), "entries.2.weight_high", 0)
    data = mutate(data, "entries.2.weight_low", 0)
    with pytest.raises(ValidationError, match=r"entries\.2: a slot needs a non-zero weight"):
        parse_preset(data)
    with pytest.raises(ValidationError, match=r"not valid JSON \(line 2, column"):
        parse_preset('{"name": "x",\n  entries: []}')
    with pytest.raises(ValidationError, match="must be a JSON object"):
        parse_preset("[]")


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("../outside.safetensors", "goes up with '..'"),
        ("styles/../../outside.safetensors", "goes up with '..'"),
        ("/etc/outside.safetensors", "is absolute"),
        ("~/outside.safetensors", "is absolute"),
    ],
)
def test_paths_cannot_escape_the_lora_folders(lora_dir, path, expected):
    data = mutate(full_preset_data(), "entries.1.high.path", path)
    with pytest.raises(ValidationError) as err:
        parse_preset(data, roots=[lora_dir])
    assert "entries.1.high.path: " in str(err.value) and expected in str(err.value)


def test_a_symlink_out_of_a_lora_folder_is_refused(tmp_path, lora_dir):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (lora_dir / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (lora_dir / "linked-folder").symlink_to(outside)
    for path in ("link.safetensors", "linked-folder/secret.safetensors"):
        data = mutate(full_preset_data(), "entries.1.low.path", path)
        with pytest.raises(ValidationError, match=r"entries\.1\.low\.path: .* leads out of the LoRA folders"):
            parse_preset(data, roots=[lora_dir])
    # A link that stays inside the folder is fine.
    (lora_dir / "real.safetensors").write_bytes(b"x")
    (lora_dir / "inside.safetensors").symlink_to(lora_dir / "real.safetensors")
    parse_preset(mutate(full_preset_data(), "entries.1.low.path", "inside.safetensors"), roots=[lora_dir])


def test_absolute_paths_inside_a_lora_folder_become_relative(lora_dir, tmp_path):
    data = mutate(full_preset_data(), "entries.1.high.path", str(lora_dir / "styles" / "anime.safetensors"))
    assert parse_preset(data, roots=[lora_dir]).entries[1].high.path == "styles/anime.safetensors"
    stack = Stack(entries=[StackEntry.single(lora_dir / "a.safetensors", 0.5, 0.0)])
    preset = Preset.from_stack(
        "from editor", stack, roots=[lora_dir], settings=RenderSettings(steps=4, guidance=1.0)
    )
    assert preset.entries[0].high.path == "a.safetensors" and preset.entries[0].low is None
    assert preset.settings.values_set() == {"steps": 4, "guidance": 1.0, "guidance_low": 1.0, "shift": 5.0}
    outside = Stack(entries=[StackEntry.single(tmp_path / "b.safetensors")])
    with pytest.raises(ValidationError, match=r"entries\.0\.high\.path: .* is outside the LoRA folders"):
        Preset.from_stack("x", outside, roots=[lora_dir])


# ----------------------------------------------------------------------------- the guide's list


def test_the_guides_list_imports_as_a_preset(lora_dir):
    (lora_dir / "anime.safetensors").write_bytes(b"x")
    items = [
        {
            "path": str(lora_dir / "speed_high.safetensors"),
            "name": "speed high",
            "weight": 1.0,
            "applies_to": "high_noise",
        },
        {"path": "speed_low.safetensors", "name": "speed low", "weight": 1.0, "applies_to": "low_noise"},
        {"path": "/somewhere/else/anime.safetensors", "weight": 0.8, "applies_to": "both"},
        {"path": "quality.safetensors", "weight": 0.4},
    ]
    result = preset_from_data(items, roots=[lora_dir], default_name="Guide stack")
    assert result.format == "guide-list" and result.preset.name == "Guide stack"
    entries = result.preset.stack.entries
    assert [(e.name, e.weight_high, e.weight_low) for e in entries] == [
        ("speed high", 1.0, 0.0),
        ("speed low", 0.0, 1.0),
        ("anime", 0.8, 0.8),
        ("quality", 0.4, 0.4),
    ]
    assert entries[0].high.path == "speed_high.safetensors" and entries[0].low is None
    assert entries[1].low.path == "speed_low.safetensors" and entries[1].high is None
    assert entries[2].high == entries[2].low == LoraSource(path="anime.safetensors")
    assert any("/somewhere/else/anime.safetensors is outside the LoRA folders" in n for n in result.notes)
    wrapped = preset_from_data({"name": "Wrapped", "loras": items[:1]}, roots=[lora_dir])
    assert wrapped.preset.name == "Wrapped" and len(wrapped.preset.entries) == 1


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"path": "../up.safetensors"}, r"\[0\]\.path: '../up.safetensors' goes up"),
        ({"path": "a.safetensors", "applies_to": "middle"}, "applies_to: "),
        ({"path": "a.safetensors", "weight": 50}, "weight: a LoRA weight must be between"),
        ({"path": "a.safetensors", "strength": 1}, "strength: is not a known field"),
        ({"name": "no path"}, "path: Field required"),
        ({"path": "model.pt"}, "not a .safetensors file"),
    ],
)
def test_a_broken_guide_list_names_the_item_and_field(lora_dir, item, expected):
    with pytest.raises(ValidationError, match=expected):
        preset_from_data([item], roots=[lora_dir])


# ----------------------------------------------------------------------------- the store


def test_save_load_and_no_overwrite_without_confirmation(store, lora_dir):
    preset = parse_preset(full_preset_data())
    path = store.save(preset)
    assert path == store.user_dir / "my-stack.json" and load_preset(path) == preset
    assert store.load("my stack") == preset and store.load("my-stack.json") == preset
    changed = preset.model_copy(update={"description": "changed"})
    with pytest.raises(PresetExists) as err:
        store.save(changed)
    assert err.value.name == "My stack" and "Confirm to replace it" in str(err.value)
    assert store.load("My stack").description == "everything a preset can hold"
    store.save(changed, overwrite=True)
    assert store.load("My stack").description == "changed"
    # A differently spelled name that maps to the same file also asks first.
    with pytest.raises(PresetExists):
        store.save(changed.renamed("my-stack"))
    assert sorted(p.name for p in store.user_dir.iterdir()) == ["my-stack.json"]


def test_save_stack_is_one_call_from_the_editor(store, lora_dir):
    stack = Stack(entries=[StackEntry.single(lora_dir / "style.safetensors", 0.8, 0.6, name="Style")])
    path = store.save_stack("Editor", stack, settings=RenderSettings(steps=6, guidance=2.0), model="demo")
    data = json.loads(path.read_text())
    assert data["entries"][0]["high"] == {"path": "style.safetensors"}
    assert data["settings"] == {"steps": 6, "guidance": 2.0, "guidance_low": 2.0, "shift": 5.0}
    assert store.load("Editor").model == "demo"


def test_shipped_presets_are_read_only_but_can_be_duplicated(store):
    with pytest.raises(PresetReadOnly):
        store.save(store.load("Fast anime"), overwrite=True)
    with pytest.raises(PresetReadOnly):
        store.delete("Fast anime")
    with pytest.raises(PresetReadOnly):
        store.rename("Fast anime", "Mine")
    copy = store.duplicate("Fast anime")
    assert store.load("Fast anime (copy)").entries == store.load("Fast anime").entries
    assert copy.parent == store.user_dir
    second = store.duplicate("Fast anime")
    assert store.load(second).name == "Fast anime (copy 2)"


def test_rename_and_delete_user_presets(store):
    store.save(parse_preset(full_preset_data()))
    store.save(parse_preset({**full_preset_data(), "name": "Other"}))
    with pytest.raises(PresetExists):
        store.rename("My stack", "other")
    new = store.rename("My stack", "Renamed stack")
    assert new.name == "renamed-stack.json" and not (store.user_dir / "my-stack.json").exists()
    assert store.load("Renamed stack").entries[0].id == "speed"
    store.rename("Renamed stack", "RENAMED STACK")  # same file, new spelling
    assert store.load("renamed stack").name == "RENAMED STACK"
    store.delete("RENAMED STACK")
    with pytest.raises(PresetNotFound):
        store.load("RENAMED STACK")
    assert [p.name for p in store.user_dir.iterdir()] == ["other.json"]


def test_file_names_stay_inside_the_store(store):
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("🔥🔥").startswith("preset-")
    path = store.save(parse_preset({**full_preset_data(), "name": "../../Evil/name"}))
    assert path.parent == store.user_dir and path.name == "evil-name.json"
    with pytest.raises(PresetNotFound):
        store.load(str(SHIPPED_DIR.parent / "pyproject.json"))  # a .json outside the store folders


def test_import_validates_everything_before_writing(store, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(mutate(full_preset_data(), "entries.1.weight_low", 99)))
    with pytest.raises(ValidationError, match=r"broken\.json: .*entries\.1\.weight_low: a LoRA weight"):
        store.import_file(broken)
    assert not store.user_dir.exists() or list(store.user_dir.iterdir()) == []
    guide = tmp_path / "my_guide-stack.json"
    guide.write_text(
        json.dumps([{"path": "a.safetensors", "name": "a", "weight": 0.5, "applies_to": "both"}])
    )
    result = store.import_file(guide)
    assert (
        result.preset.name == "my guide stack" and store.load("my guide stack").entries[0].weight_high == 0.5
    )
    with pytest.raises(PresetExists):
        store.import_file(guide)
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(full_preset_data()))
    assert store.import_file(ours, name="Imported").preset.name == "Imported"
    infos = {i.name: i for i in store.list()}
    assert infos["Imported"].slots == 1 and not infos["Imported"].shipped


def test_a_broken_file_in_the_store_is_listed_with_its_error_and_loads_nothing(store):
    store.user_dir.mkdir(parents=True)
    (store.user_dir / "hand-edited.json").write_text(
        json.dumps(mutate({**full_preset_data(), "name": "Hand"}, "settings.frames", 80))
    )
    [broken] = [i for i in store.list() if i.error]
    assert broken.file.name == "hand-edited.json" and "settings.frames: must be 4k+1" in broken.error
    with pytest.raises(ValidationError, match=r"settings\.frames"):
        store.load("hand-edited.json")


def test_export_writes_a_copy_or_returns_the_file(store, tmp_path):
    assert store.export("Speed: lightx2v 4-step") == SHIPPED_DIR / "speed-lightx2v-4-step.json"
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    path = store.export("Speed: lightx2v 4-step", out_dir)
    assert path == out_dir / "speed-lightx2v-4-step.json"
    assert load_preset(path) == store.load("Speed: lightx2v 4-step")
    with pytest.raises(ValidationError, match="already exists"):
        store.export("Speed: lightx2v 4-step", out_dir)


# ----------------------------------------------------------------------------- shipped presets


def test_the_shipped_presets_load_with_real_hub_references(store):
    names = [i.name for i in store.list() if i.shipped and i.error is None]
    assert set(names) == {
        "Speed: lightx2v 4-step",
        "Quality: HPS2.1 reward",
        "Fast anime",
        "Cinematic character",
        "Instagram influencer",
    }
    speed = store.load("Speed: lightx2v 4-step")
    [entry] = speed.stack.entries
    assert (entry.high.repo, entry.high.file, entry.weight_high) == (LIGHTX2V, HIGH_FILE, 1.0)
    assert (entry.low.repo, entry.low.file, entry.weight_low) == (LIGHTX2V, LOW_FILE, 1.0)
    assert len(entry.high.sha256) == 64
    assert speed.settings.values_set() == {"steps": 4, "guidance": 1.0, "guidance_low": 1.0, "shift": 5.0}
    [hps] = store.load("Quality: HPS2.1 reward").stack.entries
    assert hps.low.repo == "alibaba-pai/Wan2.2-Fun-Reward-LoRAs"
    assert hps.low.file == "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors"
    assert (hps.high, hps.weight_low, hps.applies_to()) == (None, 0.5, ["low"])
    influencer = store.load("Instagram influencer")
    roles = {s.role: s for s in influencer.slots}
    assert set(roles) == {"character", "style"} and all(s.message == SLOT_MESSAGE for s in roles.values())
    assert 1.0 <= roles["character"].weight_high <= 1.1 and roles["character"].range_low == (1.0, 1.1)
    assert 0.7 <= roles["style"].weight_low <= 0.9
    quality = next(e for e in influencer.stack.entries if e.id == "quality")
    assert quality.applies_to() == ["low"] and 0.3 <= quality.weight_low <= 0.5
    assert influencer.settings.height > influencer.settings.width  # portrait
    for info in store.list():
        assert slugify(info.name) == info.file.stem


# ----------------------------------------------------------------------------- atomic saves


CRASH_SCRIPT = """
import os, pathlib, signal, sys
from studio.workflows.presets.store import PresetStore
store = PresetStore(sys.argv[1], None)
preset = store.load("My stack").model_copy(update={"description": "the new text " * 200})
def dying_write(self, text, *args, **kwargs):
    with open(self, "w", encoding="utf-8") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
pathlib.Path.write_text = dying_write
store.save(preset, overwrite=True)
print("not reached")
"""


def test_a_save_killed_midway_leaves_the_old_preset_intact(tmp_path):
    store = PresetStore(tmp_path / "user", None)
    path = store.save(parse_preset(full_preset_data()))
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(store.user_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout
    assert path.read_bytes() == before  # the old file is whole
    [partial] = [p for p in store.user_dir.iterdir() if p.name != "my-stack.json"]
    assert partial.name.startswith(".my-stack.json.partial-")  # the crashed writer's temporary file
    # A fresh partial may belong to a save in progress elsewhere: it is left alone ...
    assert PresetStore(store.user_dir, None).sweep_partials() == []
    # ... and once stale, the next store to open the folder removes it.
    old = time.time() - 3600
    os.utime(partial, (old, old))
    reopened = PresetStore(store.user_dir, None)
    assert sorted(p.name for p in store.user_dir.iterdir()) == ["my-stack.json"]
    assert reopened.load("My stack") == parse_preset(full_preset_data())


def test_a_serializer_failing_midway_leaves_the_old_preset_and_no_temporary_file(tmp_path, monkeypatch):
    store = PresetStore(tmp_path / "user", None)
    path = store.save(parse_preset(full_preset_data()))
    before = path.read_bytes()

    def failing_write(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(ValidationError, match="disk is full"):
        store.save(parse_preset({**full_preset_data(), "description": "new"}), overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in store.user_dir.iterdir()] == ["my-stack.json"]
