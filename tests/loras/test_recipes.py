"""Recipes: speed LoRAs are recognised, their recipe applies in one call, contradictions are warned about."""

from __future__ import annotations

import pytest

from studio.loras.recipes import SPEED_RECIPE, check_settings, recipe_for, speed_loras
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry
from studio.workflows.presets.schema import SHIPPED_DIR
from studio.workflows.presets.store import PresetStore


def stack_of(*entries: StackEntry) -> Stack:
    return Stack(entries=list(entries))


@pytest.mark.parametrize(
    "file_name",
    [
        "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
        "Wan2.2-Lightning_I2V-A14B-4steps-lora_HIGH_fp16.safetensors",
        "Wan21_CausVid_14B_T2V_lora_rank32.safetensors",
        "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
        "my_fast_4-step.safetensors",
    ],
)
def test_speed_loras_are_recognised_by_file_name(file_name):
    found = speed_loras(stack_of(StackEntry.single(f"/loras/{file_name}", name="x")))
    assert len(found) == 1 and "file name contains" in found[0].reason
    assert recipe_for(stack_of(StackEntry.single(f"/loras/{file_name}", name="x"))) is SPEED_RECIPE


@pytest.mark.parametrize(
    "file_name", ["anime_style.safetensors", "character_v14steps.safetensors", "hps2.1.safetensors"]
)
def test_other_loras_are_not_speed_loras(file_name):
    stack = stack_of(StackEntry.single(f"/loras/{file_name}", name="style"))
    assert speed_loras(stack) == [] and recipe_for(stack) is None


def test_hub_repo_and_header_metadata_also_count():
    hub = StackEntry(name="a", high=LoraSource(repo="lightx2v/Wan2.2-Distill-Loras", file="x.safetensors"))
    assert speed_loras(stack_of(hub))[0].reason == "Hub repo contains 'lightx2v'"
    renamed = StackEntry.single("/loras/renamed.safetensors", name="renamed", id="r1")
    assert speed_loras(stack_of(renamed)) == []
    infos = {"r1": {"title": "Wan2.2 Lightning I2V", "tags": []}}
    assert speed_loras(stack_of(renamed), infos)[0].reason == "metadata contains 'Lightning'"
    assert speed_loras(stack_of(renamed), lambda entry: {"tags": ["step-distill"]})


def test_disabled_or_zero_weight_speed_loras_do_not_count():
    off = StackEntry.single("/loras/lightx2v.safetensors", name="speed", enabled=False)
    source = LoraSource(path="/loras/lightx2v.safetensors")
    zero = StackEntry(name="speed0", high=source, low=source, weight_high=0.0, weight_low=0.0)
    assert speed_loras(stack_of(off, zero)) == []


def test_the_recipe_applies_in_one_call_and_then_no_warning_remains():
    stack = stack_of(
        StackEntry.pair("/l/lightx2v_high.safetensors", "/l/lightx2v_low.safetensors", name="speed")
    )
    settings = RenderSettings(prompt="a cat", steps=40, guidance=3.5, guidance_low=3.0, shift=8.0, seed=5)
    warnings = check_settings(stack, settings)
    assert any("made for 4 steps, but 40 steps are set" in w for w in warnings)
    assert any("CFG is on (high-noise guidance 3.5, low-noise guidance 3)" in w for w in warnings)
    assert any("Shift 8" in w for w in warnings)
    fixed = recipe_for(stack).apply(settings)
    assert (fixed.steps, fixed.guidance, fixed.guidance_low, fixed.shift) == (4, 1.0, 1.0, 5.0)
    assert (fixed.prompt, fixed.seed) == ("a cat", 5)
    assert SPEED_RECIPE.matches(fixed) and check_settings(stack, fixed) == []


def test_a_speed_lora_on_one_expert_only_is_reported():
    high_only = StackEntry(
        name="speed high", high=LoraSource(path="/l/lightx2v_high.safetensors"), weight_low=0.0
    )
    warnings = check_settings(stack_of(high_only), SPEED_RECIPE.apply(RenderSettings()))
    assert warnings == [
        "The speed LoRA is not on the low-noise expert: at 4 steps that expert renders undistilled and blurs. "
        "Add the low-noise file of the speed pair."
    ]
    assert check_settings(stack_of(high_only), SPEED_RECIPE.apply(RenderSettings()), experts=("high",)) == []


def test_few_steps_without_cfg_and_without_a_speed_lora_are_warned_about():
    style = stack_of(StackEntry.single("/l/anime.safetensors", name="anime"))
    [warning] = check_settings(style, SPEED_RECIPE.apply(RenderSettings()))
    assert "need a speed LoRA" in warning
    assert check_settings(style, RenderSettings(steps=40, guidance=3.5)) == []


def test_the_shipped_speed_preset_carries_its_recipe(tmp_path):
    store = PresetStore(tmp_path / "user", SHIPPED_DIR)
    for name in ("Speed: lightx2v 4-step", "Fast anime", "Cinematic character", "Instagram influencer"):
        preset = store.load(name)
        assert recipe_for(preset.stack) is SPEED_RECIPE
        settings = preset.apply_settings(RenderSettings(steps=40, guidance=3.5))
        assert check_settings(preset.stack, settings) == [], name
    hps = store.load("Quality: HPS2.1 reward")
    assert recipe_for(hps.stack) is None
