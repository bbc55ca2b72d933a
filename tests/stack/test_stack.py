import json

import pytest

from studio.errors import ValidationError
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry, build, parse_model


def test_stack_round_trips_through_json():
    stack = Stack(
        entries=[
            StackEntry.single("style.safetensors", 0.8, 0.6, name="Style"),
            StackEntry.pair("speed_high.safetensors", "speed_low.safetensors", 1.0, 1.0, name="Speed"),
            StackEntry(
                name="Hub LoRA",
                low=LoraSource(repo="org/repo", file="x.safetensors", revision="abc", sha256="0" * 64),
                weight_high=0.0,
                weight_low=0.5,
                enabled=False,
            ),
        ]
    )
    again = Stack.from_json(stack.to_json())
    assert again == stack
    assert json.loads(stack.to_json())["version"] == 1
    assert [e.name for e in again.entries] == ["Style", "Speed", "Hub LoRA"]
    assert again.entries[1].is_pair and not again.entries[0].is_pair


def test_settings_round_trip():
    settings = RenderSettings(prompt="a cat", width=64, height=32, frames=9, steps=4, guidance=1.0, seed=3)
    assert RenderSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("frames", 80, "4k+1"),
        ("frames", 0, "4k+1"),
        ("width", 833, "multiple of 16"),
        ("height", 8, "multiple of 16"),
        ("steps", 0, "between 1"),
        ("guidance", -1.0, "between 0 and 30"),
        ("shift", 0.0, "between 0.1"),
        ("seed", -5, "seed must be"),
    ],
)
def test_each_bad_setting_is_named(field, value, words):
    with pytest.raises(ValidationError) as err:
        build(RenderSettings, "render settings", **{field: value})
    assert field in str(err.value) and words in str(err.value)


def test_frames_error_suggests_the_nearest_valid_count():
    with pytest.raises(ValidationError, match="nearest allowed is 81"):
        build(RenderSettings, "render settings", frames=80)


def test_weights_outside_the_sane_range_are_refused():
    with pytest.raises(ValidationError, match="weight_low: a LoRA weight must be between"):
        parse_model(StackEntry, {"name": "x", "high": {"path": "a.safetensors"}, "weight_low": 11}, "entry")
    with pytest.raises(ValidationError, match="between"):
        parse_model(
            StackEntry, {"name": "x", "high": {"path": "a.safetensors"}, "weight_high": float("nan")}, "entry"
        )


def test_unknown_fields_and_sourceless_entries_are_refused():
    with pytest.raises(ValidationError, match="strength: is not a known field"):
        Stack.from_json('{"version": 1, "entries": [{"name": "x", "high": {"path": "a"}, "strength": 1}]}')
    with pytest.raises(ValidationError, match="at least one expert"):
        Stack.from_json('{"version": 1, "entries": [{"name": "x"}]}')
    with pytest.raises(ValidationError, match="not valid JSON"):
        Stack.from_json("{not json")
    with pytest.raises(ValidationError, match="either a local 'path' or a Hub"):
        parse_model(LoraSource, {"path": "a", "repo": "b", "file": "c"}, "LoRA source")


def test_zero_weight_single_entry_leaves_that_expert_out():
    entry = StackEntry.single("a.safetensors", 1.0, 0.0)
    assert entry.high is not None and entry.low is None
    assert entry.applies_to() == ["high"]
    assert StackEntry.single("a.safetensors", 0.5).weight_low == 0.5


def test_duplicate_entry_ids_are_refused():
    entry = StackEntry.single("a.safetensors")
    with pytest.raises(Exception, match="share an id"):
        Stack(entries=[entry, entry])


def test_seed_is_drawn_once_and_kept():
    settings = RenderSettings(seed=None).with_seed()
    assert settings.seed is not None
    assert settings.with_seed().seed == settings.seed


def test_stack_edits_return_new_stacks_by_entry_id():
    a, b, c = (StackEntry.single(f"{n}.safetensors", name=n) for n in "abc")
    stack = Stack(entries=[a, b]).added(c)
    assert [e.name for e in stack.entries] == ["a", "b", "c"]
    assert [e.name for e in stack.moved(c.id, -1).entries] == ["a", "c", "b"]
    assert [e.name for e in stack.moved(a.id, -5).entries] == ["a", "b", "c"]
    assert [e.name for e in stack.removed(b.id).entries] == ["a", "c"]
    assert stack.updated(b.id, weight_low=0.25).entries[1].weight_low == 0.25
    with pytest.raises(ValidationError, match="weight_high"):
        stack.updated(b.id, weight_high=99)
    with pytest.raises(ValidationError, match="no longer in the stack"):
        stack.removed("nope")
