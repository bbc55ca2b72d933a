"""Training on a bf16 model (the dtype real models run in): float32 LoRA master weights, a bf16 pair."""

from __future__ import annotations

import math

import pytest
import torch
from trainkit import base_options

from studio.engine.manager import PipelineManager, RenderRequest
from studio.loras.safetensors_io import read_header
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.training import adapter
from studio.training.trainer import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_manager(train_settings):
    manager = PipelineManager(train_settings.with_(dtype="bfloat16"), device="cpu")
    manager.load_model("demo")
    assert manager.pipe.transformer.dtype == torch.bfloat16
    return manager


def test_steps_on_a_bf16_expert_keep_float32_lora_weights(bf16_manager, train_dataset):
    trainer = Trainer(bf16_manager, base_options(name="bf16-steps"), dataset=train_dataset)
    encoded, buckets = trainer.prepare_steps()
    try:
        high = trainer.experts[0]
        assert {p.dtype for _, p in high.params} == {torch.float32}
        model = bf16_manager.pipe.transformer
        layer = next(iter(adapter.lora_modules(model).values()))
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
        before = {n: p.detach().clone() for n, p in high.params}
        losses = [trainer.optimizer_step(high, encoded, buckets) for _ in range(3)]
        assert all(math.isfinite(x) for x in losses)
        assert any(not torch.equal(before[n], p) for n, p in high.params)
    finally:
        trainer.close()
    assert not adapter.lora_modules(bf16_manager.pipe.transformer)


def test_a_bf16_run_exports_a_bf16_pair_that_renders(bf16_manager, train_dataset, start_image):
    result = Trainer(
        bf16_manager, base_options(name="bf16-run", steps=2, save_every=0), dataset=train_dataset
    ).run()
    high, low = result.files
    dtypes = {t.dtype for t in read_header(high).tensors.values()}
    assert dtypes == {"BF16"}
    settings = RenderSettings(
        prompt="a red wave", width=32, height=32, frames=9, steps=2, guidance=1.0, seed=1
    )
    stack = Stack(entries=[StackEntry.pair(high, low, name="bf16")])
    latents = bf16_manager.render(
        RenderRequest(image=start_image, settings=settings, stack=stack, decode=False)
    ).latents
    assert torch.isfinite(latents).all()
