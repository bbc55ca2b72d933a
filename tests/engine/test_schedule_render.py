"""Schedules in real renders of the demo model: weights set between steps, exactly, per expert."""

from __future__ import annotations

import pytest
import torch
from lorakit import SETTINGS

from studio.engine import lora_ops
from studio.engine.manager import CancelToken, PipelineManager, RenderRequest
from studio.errors import RenderCancelled, ValidationError
from studio.stack import schedule as S
from studio.stack.schema import RenderSettings, Stack, StackEntry

COMPONENT = {"high": "transformer", "low": "transformer_2"}


@pytest.fixture()
def manager(settings):
    mgr = PipelineManager(settings, device="cpu")
    mgr.load_model("demo")
    return mgr


def _render(manager, image, stack, settings=SETTINGS, **kw):
    seen = []
    result = manager.render(
        RenderRequest(image=image, settings=settings, stack=stack, decode=False, **kw), progress=seen.append
    )
    return result, seen


def _adapter_of(manager, path) -> str:
    from studio.engine.plan import adapter_name
    from studio.loras.sources import FileIdentity

    return adapter_name(FileIdentity.of(path.resolve()))


def _scale(manager, expert, adapter) -> float | None:
    """The scale the model holds for ``adapter`` now (weight × alpha / r; alpha = r for loaded files)."""
    for layer in lora_ops.lora_layers(getattr(manager.pipe, COMPONENT[expert])):
        if adapter in layer.scaling:
            active = adapter in layer.active_adapters and not layer.disable_adapters
            return layer.scaling[adapter] if active else 0.0
    return None


def test_recorded_and_applied_weights_equal_each_schedule_form(manager, start_image, make_lora):
    settings = SETTINGS.model_copy(update={"steps": 6})
    forms = {
        "constant": ("0.8", "0.6"),
        "list": ("1,0.5,0.25,9,9,9", "9,9,9,0,0.5,1"),  # 9: on the other expert's steps, never applied
        "ramp": ("1>0", "0>1"),
        "eased": ("1>0 cosine", "-0.5>0.5 cosine"),
        "percent": ("0.8@0-50%", "0.7@50%-"),
        "steps": ("1@2-3", "1@4"),
    }
    entries, paths = [], {}
    for i, (name, (high, low)) in enumerate(forms.items()):
        paths[name] = make_lora(f"{name}.safetensors", seed=20 + i)
        entries.append(StackEntry.single(paths[name], name=name, schedule_high=high, schedule_low=low))
    stack = Stack(entries=entries)
    split = manager.split(settings)
    assert split.experts == ("high", "high", "high", "low", "low", "low")  # t = 999, 961, 909 | 833, 714, 501

    applied: list[dict] = []

    def watch(event):  # after step i ran and before i+1's weights are set: the scales step i used
        expert = event.expert
        applied.append({n: _scale(manager, expert, _adapter_of(manager, p)) for n, p in paths.items()})

    result = manager.render(
        RenderRequest(image=start_image, settings=settings, stack=stack, decode=False), progress=watch
    )
    assert result.experts_per_step == list(split.experts)
    rows = {(r["expert"], r["file"]): r["weights"] for r in result.lora_weights_per_step}
    for name, path in paths.items():
        for expert, text in zip(("high", "low"), forms[name], strict=True):
            want = S.weights(S.parse(text), 6)
            runs = split.steps_of(expert)
            row = rows.get((expert, str(path.resolve())))
            if not any(want[i] for i in runs):  # 0 on every step of this expert: not loaded there
                assert row is None, (name, expert)
                continue
            assert row == [want[i] if i in runs else None for i in range(6)], (name, expert)
            for i in runs:
                assert applied[i][name] == pytest.approx(want[i], abs=1e-12), (name, expert, i)
    records = {(r["expert"], r["file"]): r for r in result.loras}
    assert records[("high", str(paths["ramp"].resolve()))]["scheduled"]
    assert not records[("high", str(paths["constant"].resolve()))]["scheduled"]


def test_a_constant_schedule_renders_bit_identically_to_the_plain_weight(manager, start_image, make_lora):
    path = make_lora("style.safetensors", seed=3)
    plain, _ = _render(manager, start_image, Stack(entries=[StackEntry.single(path, 0.7, 0.4, name="s")]))
    scheduled = StackEntry.single(
        path, 1.0, 1.0, name="s", schedule_high="0.7>0.7", schedule_low="0.4,0.4,0.4,0.4"
    )
    again, _ = _render(manager, start_image, Stack(entries=[scheduled]))
    assert torch.equal(plain.latents, again.latents)
    assert again.fused == plain.fused  # constant on each expert: fused (or not) exactly like the plain weight


def test_off_after_the_switch_equals_the_high_noise_expert_only(manager, start_image, make_lora):
    path = make_lora("high.safetensors", seed=4)
    entry = StackEntry.single(path, 1.0, 1.0, schedule_high="1,1,0,0", schedule_low="1,1,0,0")
    result, _ = _render(manager, start_image, Stack(entries=[entry]))
    assert result.experts_per_step == ["high", "high", "low", "low"]
    assert "transformer_2" not in manager.loaded_adapters()  # 0 on every low-noise step: never loaded there
    reference, _ = _render(manager, start_image, Stack(entries=[StackEntry.single(path, 1.0, 0.0)]))
    assert torch.equal(result.latents, reference.latents)
    assert reference.fused == result.fused


def test_weights_change_between_steps_exactly_as_the_diffusers_recipe(manager, start_image, make_lora):
    """The same render driven by diffusers' documented callback (set_adapters in callback_on_step_end)."""
    from studio.media.images import fit_image

    path = make_lora("ramp.safetensors", seed=5)
    high, low = "1,0.25,9,9", "9,9,0.5,-1"
    settings = SETTINGS.model_copy(update={"guidance": 1.0, "guidance_low": 1.0})  # no CFG: nothing fuses
    entry = StackEntry.single(path, name="ramp", schedule_high=high, schedule_low=low)
    ours, _ = _render(manager, start_image, Stack(entries=[entry]), settings)
    assert ours.fused == {}
    adapter = _adapter_of(manager, path)
    per_step = {"high": S.weights(S.parse(high), 4), "low": S.weights(S.parse(low), 4)}
    experts = ["high", "high", "low", "low"]
    pipe = manager.pipe
    pipe.transformer.set_adapters([adapter], [per_step["high"][0]])
    pipe.transformer_2.set_adapters([adapter], [per_step["low"][2]])

    def recipe(pipe, i, t, kwargs):
        if i + 1 < len(experts):
            model = pipe.transformer if experts[i + 1] == "high" else pipe.transformer_2
            model.set_adapters([adapter], [per_step[experts[i + 1]][i + 1]])
        return {}

    out = pipe(
        image=fit_image(start_image, settings.width, settings.height),
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        height=settings.height,
        width=settings.width,
        num_frames=settings.frames,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        guidance_scale_2=settings.effective_guidance_low,
        generator=torch.Generator(device="cpu").manual_seed(settings.seed),
        output_type="latent",
        callback_on_step_end=recipe,
    )
    assert torch.equal(out.frames.float(), ours.latents)
    constant, _ = _render(manager, start_image, Stack(entries=[StackEntry.single(path, 1.0, 0.5)]), settings)
    assert not torch.allclose(constant.latents, ours.latents)  # the schedule did change the render


def test_fused_constants_with_unfused_schedules_match_all_unfused(manager, start_image, make_lora):
    still, moving = make_lora("still.safetensors", seed=6), make_lora("moving.safetensors", seed=7)
    stack = Stack(
        entries=[
            StackEntry.single(still, 0.8, 0.6, name="still"),
            StackEntry.single(moving, name="moving", schedule_high="1>0", schedule_low="0>1 cosine"),
        ]
    )
    settings = SETTINGS.model_copy(update={"guidance": 1.0, "guidance_low": 1.0})
    unfused, _ = _render(manager, start_image, stack, settings)
    assert unfused.fused == {}
    fused, _ = _render(manager, start_image, stack, settings, fuse=True)
    name = _adapter_of(manager, still)
    assert fused.fused == {"high": [name], "low": [name]}  # the constant one only
    torch.testing.assert_close(fused.latents, unfused.latents, atol=1e-5, rtol=0)
    assert {(r["file"].endswith("still.safetensors"), r["fused"]) for r in fused.loras} == {
        (True, True),
        (False, False),
    }
    # the next render of the same stack keeps the constant one fused: no unfuse/fuse round trip
    calls = []
    original = lora_ops.unfuse
    try:
        lora_ops.unfuse = lambda model: calls.append(model) or original(model)
        again, _ = _render(manager, start_image, stack, settings, fuse=True)
    finally:
        lora_ops.unfuse = original
    assert calls == [] and torch.equal(again.latents, fused.latents)


def test_a_cancelled_scheduled_render_stops_between_steps(manager, start_image, make_lora):
    path = make_lora("fade.safetensors", seed=8)
    entry = StackEntry.single(path, name="fade", schedule_high="1>0", schedule_low="0.5@3-4")
    stack = Stack(entries=[entry])
    token = CancelToken()
    seen = []

    def stop_after_two(event):
        seen.append((event.step, _scale(manager, event.expert, _adapter_of(manager, path))))
        if event.step == 2:
            token.cancel()

    with pytest.raises(RenderCancelled) as caught:
        manager.render(
            RenderRequest(image=start_image, settings=SETTINGS, stack=stack, decode=False),
            progress=stop_after_two,
            cancel=token,
        )
    assert (caught.value.steps_done, caught.value.total) == (2, 4)
    assert str(caught.value) == "Render cancelled after step 2 of 4; nothing was written."
    assert seen == [(1, 1.0), (2, pytest.approx(2 / 3))]  # the ramp's first two weights, then it stopped
    after, _ = _render(manager, start_image, stack)
    fresh = PipelineManager(manager.settings, device="cpu")
    clean, _ = _render(fresh, start_image, stack)
    assert torch.equal(after.latents, clean.latents)  # the cancel left no weight or fuse behind


@pytest.mark.parametrize("k", [1, 3])
def test_high_noise_steps_set_the_split_the_render_runs(manager, start_image, make_lora, k):
    path = make_lora("split.safetensors", seed=9)
    settings = SETTINGS.model_copy(update={"high_steps": k})
    split = manager.split(settings)
    assert split.experts == tuple(["high"] * k + ["low"] * (4 - k))
    entry = StackEntry.single(path, name="s", schedule_high="1", schedule_low="1@2")  # low only on step 2
    result, seen = _render(manager, start_image, Stack(entries=[entry]), settings)
    assert result.experts_per_step == list(split.experts) == [e.expert for e in seen]
    assert (manager.loaded_adapters().get("transformer_2") is not None) == (k == 1)
    assert manager.pipe.config.boundary_ratio == manager.spec.boundary_ratio  # restored after the render


def test_invalid_schedules_get_a_sentence_naming_the_entry_and_expert(manager, start_image, make_lora):
    path = make_lora("style.safetensors", seed=10)
    bad = StackEntry.single(path, name="Style", schedule_low="1,1,0")
    with pytest.raises(
        ValidationError,
        match=r"low-noise schedule of LoRA 'Style': the per-step list has 3 weights but the render has 4 steps",
    ):
        _render(manager, start_image, Stack(entries=[bad]))
    assert manager.lora_file_reads == 0 and manager.loaded_adapters() == {}
    off = StackEntry.single(path, name="Style", schedule_high="1@5-6")
    with pytest.raises(
        ValidationError, match=r"high-noise schedule of LoRA 'Style': the range 5-6 goes past the last step"
    ):
        _render(manager, start_image, Stack(entries=[off]))
    # a disabled entry's schedule is not checked
    _render(manager, start_image, Stack(entries=[bad.model_copy(update={"enabled": False})]))
    with pytest.raises(
        ValidationError, match=r"entries\.0: the high-noise schedule of LoRA 'Style': '2>' is not a ramp"
    ):
        Stack.from_json(
            '{"entries": [{"name": "Style", "high": {"path": "a.safetensors"}, "schedule_high": "2>"}]}'
        )
    with pytest.raises(ValidationError, match="high-noise steps must be between 0 and the step count 4"):
        RenderSettings.from_json('{"steps": 4, "high_steps": 5}')
