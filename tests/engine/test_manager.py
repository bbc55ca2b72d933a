"""The pipeline manager on the demo model: stack diffs, expert routing, fuse, cancel."""

from __future__ import annotations

import math

import pytest
import torch
from lorakit import SETTINGS, close

from studio.engine.manager import CancelToken, PipelineManager, RenderRequest
from studio.errors import LoraFileError, RenderCancelled, ValidationError
from studio.stack.schema import LoraSource, Stack, StackEntry


@pytest.fixture()
def manager(settings):
    mgr = PipelineManager(settings, device="cpu")
    mgr.load_model("demo")
    return mgr


# One forward per expert: fusing does not pay off, so these renders run the LoRAs unfused.
UNFUSED = SETTINGS.model_copy(update={"steps": 2, "guidance": 1.0, "guidance_low": 1.0})


def latents(manager, start_image, stack=None, settings=SETTINGS, **kw):
    request = RenderRequest(image=start_image, settings=settings, stack=stack or Stack(), decode=False, **kw)
    return manager.render(request).latents


def step_latents(manager, start_image, stack):
    seen = []
    request = RenderRequest(
        image=start_image, settings=SETTINGS, stack=stack, decode=False, capture_step_latents=True
    )
    result = manager.render(request, progress=seen.append)
    return [e.latents for e in seen], result


def test_demo_steps_run_two_on_each_expert(manager, start_image):
    seen = []
    result = manager.render(
        RenderRequest(image=start_image, settings=SETTINGS, decode=False), progress=seen.append
    )
    assert result.experts_per_step == ["high", "high", "low", "low"]
    assert [e.step for e in seen] == [1, 2, 3, 4] and seen[0].total == 4
    assert result.settings.seed == 42


def test_render_is_deterministic_for_a_seed(manager, start_image):
    assert torch.equal(latents(manager, start_image), latents(manager, start_image))


def test_weight_change_reads_no_file_and_keeps_the_model(manager, start_image, make_lora):
    path = make_lora("style.safetensors")
    entry = StackEntry.single(path, 1.0, 1.0, name="Style")
    first = latents(manager, start_image, Stack(entries=[entry]))
    reads, loads, model = manager.lora_file_reads, manager.model_loads, manager.pipe.transformer
    assert reads == 1  # read once, loaded into both experts
    assert len(manager.loaded_adapters()["transformer"]) == 1
    assert len(manager.loaded_adapters()["transformer_2"]) == 1

    changed = Stack(entries=[entry.model_copy(update={"weight_high": 0.4, "weight_low": 1.7})])
    second = latents(manager, start_image, changed)
    assert manager.lora_file_reads == reads and manager.model_loads == loads
    assert manager.pipe.transformer is model
    assert not torch.allclose(first, second)
    weights = manager.active_weights()
    assert list(weights["transformer"].values()) == [0.4] and list(weights["transformer_2"].values()) == [1.7]

    # Disabling and re-enabling is also just a scale change.
    latents(manager, start_image, Stack(entries=[entry.model_copy(update={"enabled": False})]))
    again = latents(manager, start_image, Stack(entries=[entry]))
    assert manager.lora_file_reads == reads
    assert torch.allclose(first, again, atol=1e-6)


def test_low_only_lora_leaves_the_high_noise_steps_alone(manager, start_image, make_lora):
    path = make_lora("low.safetensors", seed=1)
    base_steps, _ = step_latents(manager, start_image, Stack())
    low_only = Stack(
        entries=[StackEntry(name="low", low=LoraSource.local(path), weight_high=0.0, weight_low=1.0)]
    )
    steps, result = step_latents(manager, start_image, low_only)
    assert "transformer" not in manager.loaded_adapters()
    assert result.experts_per_step == ["high", "high", "low", "low"]
    assert torch.equal(steps[0], base_steps[0]) and torch.equal(steps[1], base_steps[1])
    assert not torch.allclose(steps[2], base_steps[2])


def test_high_only_lora_changes_the_first_step(manager, start_image, make_lora):
    path = make_lora("high.safetensors", seed=2)
    base_steps, _ = step_latents(manager, start_image, Stack())
    steps, _ = step_latents(manager, start_image, Stack(entries=[StackEntry.single(path, 1.0, 0.0)]))
    assert "transformer_2" not in manager.loaded_adapters()
    assert not torch.allclose(steps[0], base_steps[0])


def test_different_high_and_low_weights_give_different_latents(manager, start_image, make_lora):
    path = make_lora()
    a = latents(manager, start_image, Stack(entries=[StackEntry.single(path, 1.0, 0.2)]))
    b = latents(manager, start_image, Stack(entries=[StackEntry.single(path, 0.2, 1.0)]))
    assert not torch.allclose(a, b)


def test_weight_zero_equals_no_lora(manager, start_image, make_lora):
    path = make_lora()
    base = latents(manager, start_image)
    entry = StackEntry.single(path, 1.0, 1.0)
    latents(manager, start_image, Stack(entries=[entry]))  # loaded...
    zero = latents(
        manager,
        start_image,
        Stack(entries=[entry.model_copy(update={"weight_high": 0.0, "weight_low": 0.0})]),
    )
    assert torch.allclose(base, zero, atol=1e-6)


def test_removed_lora_is_deleted_and_the_base_model_restored(manager, start_image, make_lora):
    path = make_lora()
    base = latents(manager, start_image)
    latents(manager, start_image, Stack(entries=[StackEntry.single(path)]))
    after = latents(manager, start_image, Stack())
    assert manager.loaded_adapters() == {}
    assert torch.allclose(base, after, atol=1e-6)
    assert manager.model_loads == 1


def test_pair_puts_each_file_on_its_expert(manager, start_image, make_lora):
    high, low = make_lora("x_high_noise.safetensors", seed=5), make_lora("x_low_noise.safetensors", seed=6)
    latents(manager, start_image, Stack(entries=[StackEntry.pair(high, low)]))
    records = {r["expert"]: r["file"] for r in manager.lora_records()}
    assert records == {"high": str(high.resolve()), "low": str(low.resolve())}
    assert all(len(r["sha256"]) == 64 for r in manager.lora_records())


def test_cancel_stops_the_render_and_the_next_one_works(manager, start_image):
    token = CancelToken()
    steps = []

    def progress(event):
        steps.append(event.step)
        if event.step == 2:
            token.cancel()

    with pytest.raises(RenderCancelled):
        manager.render(RenderRequest(image=start_image, settings=SETTINGS), progress=progress, cancel=token)
    assert steps == [1, 2]
    result = manager.render(RenderRequest(image=start_image, settings=SETTINGS))
    assert result.frames.shape == (9, 32, 32, 3)


def test_missing_lora_file_is_a_clear_error(manager, start_image, lora_dir):
    stack = Stack(entries=[StackEntry.single(lora_dir / "gone.safetensors", name="Gone")])
    with pytest.raises(LoraFileError, match=r"Gone: .*not found"):
        latents(manager, start_image, stack)
    assert (
        manager.render(RenderRequest(image=start_image, settings=SETTINGS, decode=False)).latents is not None
    )


def test_path_outside_the_lora_folders_is_refused(manager, start_image, tmp_path, make_lora):
    outside = tmp_path / "elsewhere.safetensors"
    make_lora().rename(outside)
    for text in (str(outside), "../elsewhere.safetensors"):
        with pytest.raises(LoraFileError, match="outside the LoRA folders"):
            manager.apply_stack(Stack(entries=[StackEntry(name="x", high=LoraSource(path=text))]))


def test_size_must_fit_the_model(manager, start_image):
    manager.spec = manager.spec.__class__(**{**manager.spec.__dict__, "size_multiple": 32})
    with pytest.raises(ValidationError, match="multiples of 32"):
        manager.render(RenderRequest(image=start_image, settings=SETTINGS.model_copy(update={"width": 48})))


def test_switching_models_unloads_the_old_one(manager, demo_model_dir):
    old = manager.pipe
    spec = manager.load_model(str(demo_model_dir))
    assert manager.pipe is not old and manager.model_loads == 2 and spec.folder == demo_model_dir
    assert manager.load_model(str(demo_model_dir)) is spec or manager.model_loads == 2


def test_a_lora_for_another_model_size_is_refused_before_it_touches_the_model(manager, lora_dir):
    from studio.loras.synthetic import WAN_1_3B_CONFIG, make_lora_tensors, write_lora

    path = write_lora(
        lora_dir / "big.safetensors",
        make_lora_tensors(WAN_1_3B_CONFIG, rank=2, blocks=[0], modules=["attn1.to_q"]),
    )
    with pytest.raises(LoraFileError, match=r"would change nothing on this model.*dim 1536"):
        manager.apply_stack(Stack(entries=[StackEntry.single(path)]))
    assert manager.loaded_adapters() == {}


def test_a_partly_matching_lora_loads_with_its_report(
    manager, start_image, lora_dir, demo_transformer_config
):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    tensors = make_lora_tensors(demo_transformer_config, layout="original", blocks=[0, 1, 2], seed=8)
    path = write_lora(lora_dir / "three_blocks.safetensors", tensors)
    manager.apply_stack(Stack(entries=[StackEntry.single(path)]))
    report = manager.reports[path.resolve()]
    assert 0 < report.percent < 100
    assert any("block 2 does not exist" in s.reason for s in report.skipped)


def test_a_pickle_file_is_refused_and_never_unpickled(manager, lora_dir):
    path = lora_dir / "evil.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle stream renamed to .safetensors
    with pytest.raises(LoraFileError):
        manager.apply_stack(Stack(entries=[StackEntry.single(path)]))
    assert manager.loaded_adapters() == {}


def test_a_stack_is_fused_automatically_only_when_it_pays_off(manager, start_image, make_lora):
    stack = Stack(entries=[StackEntry.single(make_lora())])
    one_step = SETTINGS.model_copy(update={"steps": 1, "guidance": 1.0, "guidance_low": 1.0})
    assert not manager.fuse_pays_off(one_step)  # nothing loaded yet
    manager.render(RenderRequest(image=start_image, settings=one_step, stack=stack, decode=False))
    assert not manager._fused  # one forward per expert: fusing would cost more than it saves
    assert manager.fuse_pays_off(SETTINGS.model_copy(update={"width": 832, "height": 480, "frames": 81}))
    manager.render(RenderRequest(image=start_image, settings=SETTINGS, stack=stack, decode=False))
    assert manager._fused  # 4 CFG steps: two forwards per step pay for the fuse
    reads = manager.lora_file_reads
    changed = Stack(entries=[stack.entries[0].model_copy(update={"weight_low": 0.5})])
    manager.render(RenderRequest(image=start_image, settings=SETTINGS, stack=changed, decode=False))
    assert manager.active_weights()["transformer_2"] == {
        next(iter(manager.active_weights()["transformer_2"])): 0.5
    }
    assert manager.lora_file_reads == reads  # unfuse, re-weight, fuse: still no file read


# --------------------------------------------------------------------------- bf16 on the CPU
@pytest.fixture(params=["float32", "bfloat16"])
def typed_manager(settings, request):
    """The demo model loaded in float32 (the CPU default) or in bf16 (``Settings.dtype``)."""
    mgr = PipelineManager(settings.with_(dtype=request.param), device="cpu")
    mgr.load_model("demo")
    assert mgr.pipe.transformer.dtype == getattr(torch, request.param)
    return mgr


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_tensors(model, expected: dict) -> None:
    now = model.state_dict()
    assert now.keys() == expected.keys()
    changed = [k for k in expected if not torch.equal(now[k], expected[k])]
    assert not changed, f"{len(changed)} of {len(expected)} tensors differ from a freshly loaded model"


def test_lora_paths_in_both_dtypes(typed_manager, start_image, make_lora):
    """Load, weight change, fuse/unfuse, delete and render; removing the stack gives the base back exactly."""
    manager = typed_manager
    base = latents(manager, start_image)
    loaded = {c: _state(getattr(manager.pipe, c)) for c in ("transformer", "transformer_2")}
    a, b = make_lora("a.safetensors", seed=3), make_lora("b.safetensors", seed=4, layout="lightx2v")
    entry = StackEntry.single(a, 0.8, 0.5)
    stack = Stack(entries=[entry, StackEntry.pair(a, b, 0.3, 1.2)])
    first = latents(manager, start_image, stack, UNFUSED)
    assert not manager._fused and not torch.allclose(first, base)
    fused = latents(manager, start_image, stack, UNFUSED, fuse=True)
    assert manager._fused
    # bf16 rounds the fused sum: measured 0.048 (1.5 bf16 ulps) on latents up to 6.3; float32 4e-6
    close(fused, first, manager.pipe.transformer.dtype)
    manager.apply_stack(stack)  # unfused again (a render alone keeps an unchanged stack fused)
    assert torch.equal(latents(manager, start_image, stack, UNFUSED), first)
    latents(manager, start_image, stack)  # 4 CFG steps: fused automatically, then undone below
    assert manager._fused
    zero = stack.model_copy(update={"entries": [e.model_copy(update={"weight_high": 0.0, "weight_low": 0.0}) for e in stack.entries]})  # fmt: skip
    assert torch.equal(latents(manager, start_image, zero), base)  # weight 0 is no LoRA at all
    assert torch.equal(latents(manager, start_image, Stack()), base)
    assert manager.loaded_adapters() == {} and manager.lora_file_reads == 2 and manager.model_loads == 1
    for component, state in loaded.items():
        _assert_same_tensors(getattr(manager.pipe, component), state)


@pytest.mark.slow
def test_a_bf16_render_after_50_fused_weight_changes_equals_a_fresh_models(settings, start_image, make_lora):
    bf16 = settings.with_(dtype="bfloat16")
    fresh = PipelineManager(bf16, device="cpu")
    fresh.load_model("demo")
    expected = latents(fresh, start_image)
    manager = PipelineManager(bf16, device="cpu")
    manager.load_model("demo")
    a, b, c = (make_lora(f"{n}.safetensors", seed=i, layout=lay) for i, (n, lay) in
               enumerate([("a", "original"), ("b", "lightx2v"), ("c", "lokr")]))  # fmt: skip
    for cycle in range(50):
        w = [round(0.2 + 1.3 * math.sin(3 * cycle + k), 3) for k in range(4)]
        stack = Stack(entries=[StackEntry.single(a, w[0], w[1]), StackEntry.pair(b, c, w[2], w[3])])
        if cycle == 25:  # a fused render in the middle of it
            latents(manager, start_image, stack, fuse=True)
        else:
            manager.apply_stack(stack, fuse=True)
        assert manager._fused
    assert manager.lora_file_reads == 3
    manager.apply_stack(Stack())
    for component in ("transformer", "transformer_2"):
        _assert_same_tensors(getattr(manager.pipe, component), getattr(fresh.pipe, component).state_dict())
    assert torch.equal(latents(manager, start_image), expected)


def test_an_ai_toolkit_two_expert_file_lands_as_a_pair(manager, lora_dir, settings, demo_transformer_config):
    """One library item, one file read; the transformer_1 half on the high expert, transformer_2 on the low."""
    from safetensors.torch import load_file

    from studio.loras.library import LoraLibrary
    from studio.loras.synthetic import write_layout

    path = write_layout(
        lora_dir / "both_experts.safetensors", demo_transformer_config, "ai_toolkit", scale=0.2
    )
    raw = load_file(str(path))
    (item,) = LoraLibrary([lora_dir], settings.cache_dir).scan()
    assert item.kind == "single" and item.expert is None and item.info.experts_in_file == ["high", "low"]
    entry = item.to_stack_entry(1.0, 0.5)
    assert entry.high == entry.low and entry.high.path == str(path.resolve())
    reads = manager.lora_file_reads
    manager.apply_stack(Stack(entries=[entry]))
    assert manager.lora_file_reads == reads + 1
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    for component, prefix, weight in (
        ("transformer", "diffusion_model.transformer_1", 1.0),
        ("transformer_2", "diffusion_model.transformer_2", 0.5),
    ):
        layer = getattr(manager.pipe, component).get_submodule("blocks.1.attn2.to_k")
        down = raw[f"{prefix}.blocks.1.cross_attn.k.lora_A.weight"].double()
        up = raw[f"{prefix}.blocks.1.cross_attn.k.lora_B.weight"].double()
        with torch.no_grad():
            got = (layer(x) - layer.get_base_layer()(x)).double()
        torch.testing.assert_close(got, weight * x.double() @ (up @ down).T, atol=2e-5, rtol=1e-4)
