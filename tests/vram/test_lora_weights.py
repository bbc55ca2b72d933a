"""The fuse backups in the estimate: the host copy of every touched weight, against a real fused model."""

from __future__ import annotations

import pytest
import torch

from studio.engine import lora_ops
from studio.loras.inspect import inspect_lora
from studio.loras.match import prepare_lora
from studio.loras.synthetic import write_layout
from studio.models import shapes as model_shapes
from studio.models.demo import TRANSFORMER_CONFIG
from studio.models.shapes import A14B
from studio.vram.estimate import estimate
from studio.vram.lora_weights import fuse_backup_bytes
from studio.vram.types import GB, LoraLoad


@pytest.mark.parametrize(("layout", "dtype"), [("peft", torch.float32), ("lightx2v", torch.bfloat16)])
def test_backup_bytes_match_a_real_fused_model(tmp_path, demo_model_dir, layout, dtype):
    from diffusers import WanTransformer3DModel

    path = write_layout(tmp_path / "style.safetensors", TRANSFORMER_CONFIG, layout, rank=4)
    load = LoraLoad.from_info(inspect_lora(path, hash_file=False), experts=("high",))
    model = WanTransformer3DModel.from_pretrained(demo_model_dir, subfolder="transformer", torch_dtype=dtype)
    lora_ops.load_adapter(model, prepare_lora(path, model, hash_file=False).state_dict, "style")
    lora_ops.set_adapter_weights(model, {"style": 1.0})
    lora_ops.fuse(model)
    lora_ops.unfuse(model)
    expected = fuse_backup_bytes(model_shapes.demo_shapes(), [load], element_size=dtype.itemsize)
    assert lora_ops.backup_bytes(model) == expected > 0


def test_modules_touched_by_several_loras_are_backed_up_once():
    shapes = model_shapes.shapes_for("wan2.2-i2v-a14b")
    one = fuse_backup_bytes(shapes, [LoraLoad(rank=64)])
    assert fuse_backup_bytes(shapes, [LoraLoad(rank=64), LoraLoad(rank=16)]) == one
    # every Linear of every block of an A14B expert: its weights, 28 GB in bf16
    assert 27.5 * GB < one < 28.6 * GB
    half = fuse_backup_bytes(shapes, [LoraLoad(rank=8, blocks=20)])
    assert half == pytest.approx(one / 2, rel=1e-9)
    assert fuse_backup_bytes(shapes, [LoraLoad(rank=8, blocks=20), LoraLoad(rank=8, blocks=30)]) == one


def test_the_estimate_counts_the_backups_in_host_ram():
    both = [LoraLoad(rank=64)]
    kw = dict(width=832, height=480, frames=81)
    plain = estimate(A14B, mode="model-offload", **kw)
    fused = estimate(A14B, mode="model-offload", loras=both, **kw)
    backups = fused.ram_breakdown["fuse_backups"]
    assert backups == 2 * fuse_backup_bytes(model_shapes.shapes_for(A14B), both)  # two experts
    assert fused.peak_ram_bytes - plain.peak_ram_bytes >= backups
    assert any("host copy" in note for note in fused.notes)
    for mode, precision in (("model-offload", "fp8"), ("sequential", "bf16")):  # these never fuse
        est = estimate(A14B, mode=mode, precision=precision, loras=both, **kw)
        assert "fuse_backups" not in est.ram_breakdown
