"""Schedules in presets: Wan2GP .lset import with the same per-step weights, the guide's list form with
``schedule``, and a render record's schedules and high-noise steps kept on import."""

from __future__ import annotations

import json

import pytest

from studio.errors import ValidationError
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.workflows.presets.formats import preset_from_data
from studio.workflows.presets.lset import RunSteps
from studio.workflows.presets.schema import Preset, parse_preset
from studio.workflows.presets.store import PresetStore

STEPS, HIGH = 6, 2


def wangp_weights(multiplier: str, steps: int, switch: int) -> list[float]:
    """WanGP's per-step weight of one multiplier (its parse + expand_slist), restated for comparison."""

    def expand(values, count):
        out, pos, inc = [], 0.0, len(values) / count if count else 0
        for _ in range(count):
            out.append(values[int(pos)])
            pos += inc
        return out

    phases = [[float(v) for v in p.split(",")] for p in multiplier.split(";")]
    if len(phases) == 1:
        return expand(phases[0], steps)
    return expand(phases[0], switch) + expand(phases[1], steps - switch)


@pytest.fixture()
def store(tmp_path, lora_dir):
    for name in ("speed.safetensors", "style.safetensors", "fade.safetensors"):
        (lora_dir / name).write_bytes(b"")
    return PresetStore(tmp_path / "presets", roots=[lora_dir])


def test_lset_with_two_phases_and_a_per_step_list_keeps_every_steps_weight(store, tmp_path):
    multipliers = ["1;0", "0.9,0.8;1.2,1.1,1", "0.8,0.7,0.5"]
    lset = {
        "loras": ["speed.safetensors", "style.safetensors", "fade.safetensors"],
        "loras_mult": "# accelerator\n" + " ".join(multipliers),
        "prompt": "# use the word ohnvx\nan ohnvx cat",
        "full_prompt": False,
        "activated_mood": "sunny",
    }
    path = tmp_path / "my look.lset"
    path.write_text(json.dumps(lset))
    run = RunSteps(STEPS, lambda steps, shift: HIGH)
    result = store.import_file(path, run=run)
    preset = result.preset
    assert result.format == "wan2gp" and preset.name == "my look"
    assert preset.settings.steps == STEPS and preset.settings.high_steps == HIGH
    assert any("activated_mood" in note for note in result.notes)  # unknown fields are listed, not dropped
    assert "an ohnvx cat" in preset.description
    experts = ["high"] * HIGH + ["low"] * (STEPS - HIGH)
    stack = store.load("my look").stack
    for entry, multiplier in zip(stack.entries, multipliers, strict=True):
        want = wangp_weights(multiplier, STEPS, HIGH)
        for expert in ("high", "low"):
            if entry.source(expert) is None:
                assert all(w == 0 for w, e in zip(want, experts, strict=True) if e == expert)
                continue
            got = entry.step_weights(expert, STEPS)
            for i, e in enumerate(experts):
                if e == expert:
                    assert got[i] == want[i], (entry.name, expert, i)
    speed = stack.entries[0]
    assert speed.high is not None and speed.low is None and speed.weight_high == 1.0  # 1;0: high-noise only
    assert stack.entries[2].schedule_high == stack.entries[2].schedule_low  # a ',' list spans the whole run


def test_lset_of_constants_needs_no_step_count_and_reads_hub_links(tmp_path, lora_dir):
    data = {
        "activated_loras": [
            "https://huggingface.co/lightx2v/Wan2.2-Distill-Loras/resolve/main/high%20noise.safetensors",
            "https://civitai.example/api/download/123/other.safetensors",
        ],
        "loras_multipliers": "3;0 0.7",
        "num_inference_steps": 8,
    }
    result = preset_from_data(data, roots=[lora_dir], name="speed")
    first, second = result.preset.entries
    assert first.high.repo == "lightx2v/Wan2.2-Distill-Loras" and first.high.file == "high noise.safetensors"
    assert first.low is None and first.weight_high == 3.0
    assert second.high.path == "other.safetensors" and second.weight_low == 0.7
    assert any("cannot follow" in n for n in result.notes)
    assert result.preset.settings.steps == 8 and result.preset.settings.high_steps is None


def test_lset_errors_say_what_to_do(tmp_path, lora_dir):
    with pytest.raises(ValidationError, match="3 phases"):
        preset_from_data({"loras": ["a.safetensors"], "loras_mult": "1;0;1"}, roots=[lora_dir])
    with pytest.raises(ValidationError, match="give the step count"):
        preset_from_data({"loras": ["a.safetensors"], "loras_mult": "1,0"}, roots=[lora_dir])
    with pytest.raises(ValidationError, match="no LoRAs"):
        preset_from_data({"loras": [], "loras_mult": ""}, roots=[lora_dir])


def test_the_guide_list_takes_a_schedule_per_item(lora_dir):
    items = [
        {"path": "style.safetensors", "weight": 0.8, "applies_to": "both", "schedule": "1>0 cosine"},
        {"path": "fade.safetensors", "applies_to": "low_noise", "schedule": "0.5@50%-"},
    ]
    preset = preset_from_data(items, roots=[lora_dir]).preset
    style, fade = preset.stack.entries
    assert style.weight_text("high") == style.weight_text("low") == "1>0 cosine"
    assert fade.high is None and fade.weight_text("low") == "0.5@50%-"
    with pytest.raises(ValidationError, match=r"schedule.*not a ramp"):
        preset_from_data([{"path": "style.safetensors", "schedule": "1>"}], roots=[lora_dir])


def test_a_preset_round_trips_schedules_and_high_steps(lora_dir):
    stack = Stack(
        entries=[StackEntry.single(lora_dir / "style.safetensors", name="style", schedule_high="1@1-2")]
    )
    preset = Preset.from_stack(
        "sched", stack, roots=[lora_dir], settings=RenderSettings(steps=4, high_steps=1)
    )
    assert preset.settings.steps == 4
    again = parse_preset(preset.to_json(), roots=[lora_dir])
    assert again.stack.entries[0].schedule_high == stack.entries[0].schedule_high
    with pytest.raises(ValidationError, match=r"entries\.0: the low-noise schedule of LoRA 'x'"):
        parse_preset(
            {"name": "p", "entries": [{"name": "x", "low": {"path": "a.safetensors"}, "schedule_low": "1@"}]}
        )


def test_a_render_record_imports_with_its_schedules_and_split(lora_dir):
    entry = StackEntry.single(
        lora_dir / "style.safetensors", name="style", schedule_high="1>0", schedule_low="0.5"
    )
    record = {
        "kind": "wan-lora-studio/render",
        "stack": Stack(entries=[entry]).model_dump(mode="json"),
        "settings": RenderSettings(steps=4, high_steps=3).model_dump(mode="json"),
    }
    preset = preset_from_data(record, roots=[lora_dir], name="again").preset
    assert preset.settings.high_steps == 3
    assert preset.stack.entries[0].weight_text("high") == "1>0"
