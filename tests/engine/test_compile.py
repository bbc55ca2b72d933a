"""Compiled mode on the demo model with inductor on the CPU: nothing in a LoRA change recompiles.

One module-wide compiled manager renders first (that render compiles the block graph once,
for both experts); every later change runs under ``no_recompile()``
(``torch._dynamo.config.error_on_recompile``), so a recompile fails the test. Each result is
compared with an eager manager rendering the same request.
"""

from __future__ import annotations

import pytest
import torch

from studio.engine import lora_ops, lora_slots
from studio.engine.compile import compile_refusal, compiled_graphs, no_recompile
from studio.engine.manager import PipelineManager, RenderRequest
from studio.engine.memory import MemoryConfig
from studio.errors import ValidationError
from studio.loras.synthetic import make_lora_tensors, write_lora
from studio.settings import Settings
from studio.stack.schema import RenderSettings, Stack, StackEntry

pytestmark = [
    pytest.mark.slow,  # one inductor compile of the demo block (~40 s of CPU when not cached) + ~40 renders
    pytest.mark.skipif(compile_refusal("gpu", "cpu") is not None, reason="inductor needs a C++ compiler"),
]

SETTINGS = RenderSettings(
    prompt="a cat walking", width=32, height=32, frames=5, steps=4, guidance=1.0, seed=3
)
ATOL = 1e-4
ROOM = 16  # LoRA rows per expert


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_transformer_config):
    root = tmp_path_factory.mktemp("compiled")
    loras = root / "loras"
    loras.mkdir()

    def lora(name, **spec):
        tensors = make_lora_tensors(demo_transformer_config, scale=0.3, **spec)
        return write_lora(loras / f"{name}.safetensors", tensors)

    files = {
        "style": lora("style", rank=4, layout="original", seed=1),
        "detail": lora("detail", rank=8, layout="original", seed=2, modules=["attn1.to_q", "ffn.net.2"]),
        "other": lora("other", rank=4, layout="original", seed=3),
        "big": lora("big", rank=12, layout="original", seed=4),
    }
    dora = make_lora_tensors(demo_transformer_config, rank=4, layout="peft", seed=5, scale=0.3)
    for key in [k for k in dora if k.endswith("lora_B.weight")]:  # DoRA: peft applies it, the room cannot
        dora[key.replace("lora_B.weight", "lora_magnitude_vector")] = torch.rand(dora[key].shape[0]) + 0.5
    files["dora"] = write_lora(loras / "dora.safetensors", dora)
    settings = Settings(lora_dirs=(loras,), outputs_dir=root / "out", cache_dir=studio_cache, model="demo")
    return settings, files


@pytest.fixture(scope="module")
def managers(env):
    """(compiled, eager) managers on the same demo model; the compiled one has rendered once."""
    settings, files = env
    compiled = PipelineManager(
        settings, device="cpu", memory=MemoryConfig(compile=True, compile_lora_rank=ROOM)
    )
    eager = PipelineManager(settings, device="cpu")
    for m in (compiled, eager):
        m.load_model("demo")
    result = compiled.render(_request(_stack(files, style=1.0)))
    assert result.model["compiled"] and any("Compiled the transformer blocks" in n for n in result.notices)
    return compiled, eager


def _stack(files, **weights):
    entries = []
    for name, weight in weights.items():
        high, low = weight if isinstance(weight, tuple) else (weight, weight)
        entries.append(StackEntry.single(files[name], high, low, name=name))
    return Stack(entries=entries)


def _request(stack, settings=SETTINGS, *, fuse=False):
    from PIL import Image

    image = Image.new("RGB", (32, 32), (140, 60, 200))
    return RenderRequest(image=image, settings=settings, stack=stack, fuse=fuse, decode=False)


_EAGER: dict[str, object] = {}


def _eager(eager, stack, settings=SETTINGS):
    """The eager manager's result for a request (each distinct request rendered once)."""
    key = stack.model_dump_json(exclude={"entries": {"__all__": {"id"}}}) + settings.model_dump_json()
    if key not in _EAGER:
        _EAGER[key] = eager.render(_request(stack, settings))
    return _EAGER[key]


def _same_as_eager(managers, stack, settings=SETTINGS):
    compiled, eager = managers
    with no_recompile():
        got = compiled.render(_request(stack, settings))
    want = _eager(eager, stack, settings)
    assert got.model["compiled"], got.notices
    assert torch.allclose(got.latents, want.latents, atol=ATOL), (got.latents - want.latents).abs().max()
    return got, want


def test_first_render_compiled_one_graph_for_both_experts(managers, env):
    compiled, _ = managers
    graphs = compiled_graphs()
    _, files = env
    got, _ = _same_as_eager(managers, _stack(files, style=1.0))
    assert compiled_graphs() == graphs and got.experts_per_step == ["high", "high", "low", "low"]
    assert not any("Compiled the transformer blocks" in n for n in got.notices)
    assert all(
        lora_slots.bank_of(getattr(compiled.pipe, c)) is not None for c in ("transformer", "transformer_2")
    )


def test_weight_changes_do_not_recompile(managers, env):
    _, files = env
    reads = managers[0].lora_file_reads
    for weights in ((0.4, 1.7), (-1.0, 0.25), (2.5, 2.5)):
        _same_as_eager(managers, _stack(files, style=weights))
    assert managers[0].lora_file_reads == reads  # a weight change reads no file


def test_a_per_step_schedule_does_not_recompile(managers, env):
    """Weights changed between steps (the schedule path: lora_ops.set_adapter_weights in the step callback)."""
    _, files = env
    results = []
    for manager in managers:
        manager.apply_stack(_stack(files, style=1.0, other=0.5))
        names = sorted(manager.active_weights()["transformer"])
        pipe = manager.pipe

        def on_step(pipe, i, t, kwargs, names=names):
            for component in ("transformer", "transformer_2"):
                model = getattr(pipe, component)
                lora_ops.set_adapter_weights(model, {names[0]: 1.0 - 0.3 * i, names[1]: 0.2 * i})
            return {}

        def run(pipe=pipe, on_step=on_step):
            from PIL import Image

            return pipe(
                image=Image.new("RGB", (32, 32), (140, 60, 200)),
                prompt="a cat walking",
                height=32,
                width=32,
                num_frames=5,
                num_inference_steps=4,
                guidance_scale=1.0,
                generator=torch.Generator().manual_seed(3),
                output_type="latent",
                callback_on_step_end=on_step,
            ).frames

        if manager is managers[0]:
            with no_recompile():
                results.append(run())
        else:
            results.append(run())
    assert torch.allclose(results[0], results[1], atol=ATOL)


def test_adding_swapping_and_removing_loras_do_not_recompile(managers, env):
    _, files = env
    _same_as_eager(managers, _stack(files, style=1.0, detail=0.8))  # add, up to the room left
    _same_as_eager(managers, _stack(files, other=1.2, detail=0.8))  # swap style for other
    _same_as_eager(managers, _stack(files, detail=(0.0, 1.0)))  # one expert only
    _same_as_eager(managers, Stack())  # remove all
    compiled = managers[0]
    assert compiled.loaded_adapters() == {}
    bank = lora_slots.bank_of(compiled.pipe.transformer)
    assert bank.used_rows() == 0 and not any(m.lora_A.any() for m in bank.modules.values())


def test_new_seed_prompt_and_guidance_do_not_recompile(managers, env):
    _, files = env
    stack = _stack(files, style=0.7)
    for changes in (
        {"seed": 11},
        {"prompt": "a dog running in the rain", "negative_prompt": "blurry"},
        {"guidance": 3.0, "guidance_low": 2.0, "negative_prompt": "static"},  # CFG: two passes a step
        {"shift": 3.0, "steps": 3},
    ):
        _same_as_eager(managers, stack, SETTINGS.model_copy(update=changes))


def test_fuse_requests_run_in_the_room_instead(managers, env):
    _, files = env
    compiled, eager = managers
    stack = _stack(files, style=1.0)
    with no_recompile():
        got = compiled.render(_request(stack, fuse=True))
    want = _eager(eager, stack)
    assert not lora_ops.is_fused(compiled.pipe.transformer)
    assert any("instead of fusing" in n for n in got.notices)
    assert torch.allclose(got.latents, want.latents, atol=ATOL)


def test_a_new_size_recompiles_once_and_later_sizes_reuse_it(managers, env):
    _, files = env
    compiled, eager = managers
    stack = _stack(files, style=1.0)
    graphs = compiled_graphs()
    first = compiled.render(_request(stack, SETTINGS.model_copy(update={"width": 48, "frames": 9})))
    assert compiled_graphs() > graphs  # the token count changed: one recompile (dynamic shapes from now)
    assert any("Compiled the transformer blocks" in n for n in first.notices)
    want = _eager(eager, stack, SETTINGS.model_copy(update={"width": 48, "frames": 9}))
    assert torch.allclose(first.latents, want.latents, atol=ATOL)
    _same_as_eager(managers, stack, SETTINGS.model_copy(update={"width": 64, "height": 48, "frames": 13}))
    _same_as_eager(managers, stack)  # back to the first size


def test_a_stack_bigger_than_the_room_grows_it_with_a_notice(managers, env):
    _, files = env
    compiled, eager = managers
    stack = _stack(files, style=1.0, big=0.5, detail=0.3)  # 4 + 12 + 8 rows > 16
    got = compiled.render(_request(stack))
    assert any("more LoRA room" in n and "64 rows" in n for n in got.notices), got.notices
    assert lora_slots.bank_of(compiled.pipe.transformer).rows == 64
    want = _eager(eager, stack)
    assert torch.allclose(got.latents, want.latents, atol=ATOL)
    _same_as_eager(managers, _stack(files, style=0.2, big=1.0, detail=0.3))  # and then nothing recompiles


def test_a_lora_the_room_cannot_hold_runs_uncompiled_then_compiled_again(managers, env):
    _, files = env
    compiled, eager = managers
    stack = _stack(files, style=1.0, dora=0.8)
    got = compiled.render(_request(stack))
    want = _eager(eager, stack)
    assert not got.model["compiled"]
    assert any("dora.safetensors cannot hot-swap" in n and "uncompiled" in n for n in got.notices), (
        got.notices
    )
    assert torch.allclose(got.latents, want.latents, atol=ATOL)  # peft's DoRA path, eagerly
    assert lora_slots.bank_of(compiled.pipe.transformer) is None
    again = compiled.render(_request(_stack(files, style=1.0)))  # without it: compiled again
    assert again.model["compiled"]
    _same_as_eager(managers, _stack(files, style=0.5))


def test_compiled_mode_refuses_offload_modes_that_move_blocks():
    assert "group-offload" in compile_refusal("group-offload", "cuda")
    assert "sequential" in compile_refusal("sequential", "cuda")
    with pytest.raises(ValidationError, match="LoRA room"):
        MemoryConfig(compile=True, compile_lora_rank=0)


def test_turning_compiled_mode_off_releases_the_experts(env):
    settings, files = env
    manager = PipelineManager(
        settings, device="cpu", memory=MemoryConfig(compile=True, compile_lora_rank=ROOM)
    )
    manager.load_model("demo")
    manager.apply_stack(_stack(files, style=1.0))
    assert (
        lora_slots.bank_of(manager.pipe.transformer) is not None
    )  # prepared (compiles at the first forward)
    assert manager.configure_memory(MemoryConfig()) is False  # no reload
    manager.apply_stack(_stack(files, style=1.0))
    assert lora_slots.bank_of(manager.pipe.transformer) is None
    assert not any(b._compiled_call_impl for b in manager.pipe.transformer.blocks)
    weights = manager.active_weights()  # loaded again, as peft adapters
    assert manager.loaded_adapters() == {c: list(weights[c]) for c in ("transformer", "transformer_2")}
    assert lora_ops.adapter_names(manager.pipe.transformer) == set(weights["transformer"])


def test_a_compiler_that_fails_leaves_an_uncompiled_render_and_a_notice(env, monkeypatch):
    """Last here: it clears dynamo's caches (a real C++ compiler failure needs a fresh compile)."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    settings, files = env
    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/c++"))
    manager = PipelineManager(
        settings, device="cpu", memory=MemoryConfig(compile=True, compile_lora_rank=ROOM)
    )
    manager.load_model("demo")
    eager = PipelineManager(settings, device="cpu")
    eager.load_model("demo")
    try:
        stack = _stack(files, style=1.0)
        got = manager.render(_request(stack))
        assert not got.model["compiled"]
        assert any("Compiling the transformer blocks failed" in n for n in got.notices), got.notices
        assert torch.allclose(got.latents, eager.render(_request(stack)).latents, atol=ATOL)
        assert lora_slots.bank_of(manager.pipe.transformer) is None
        assert not manager.render(_request(stack)).model["compiled"]  # stays uncompiled, no second failure
    finally:
        torch._dynamo.reset()


def test_a_training_run_holds_the_experts_uncompiled_until_it_ends(env):
    """Training adds peft layers: while a run holds the model, renders run uncompiled, then compile again."""
    settings, files = env
    manager = PipelineManager(
        settings, device="cpu", memory=MemoryConfig(compile=True, compile_lora_rank=ROOM)
    )
    manager.load_model("demo")
    stack = _stack(files, style=1.0)
    manager.apply_stack(stack)
    assert lora_slots.bank_of(manager.pipe.transformer) is not None
    with manager.exclusive() as pipe:  # what the trainer does before attaching its adapter
        assert lora_slots.bank_of(pipe.transformer) is None
        assert not any(b._compiled_call_impl for b in pipe.transformer.blocks)
    manager.training = "run"
    manager.apply_stack(stack)
    assert lora_slots.bank_of(manager.pipe.transformer) is None and manager.loaded_adapters()
    manager.training = None
    manager.apply_stack(stack)
    assert lora_slots.bank_of(manager.pipe.transformer) is not None
