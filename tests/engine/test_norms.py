"""Base-weight norms (read at model load for the stack doctor): exact, chunked, any dtype, under LoRA wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from studio.engine import norms as norms_module
from studio.engine.norms import squared_norm, weight_norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_squared_norm_reads_in_chunks_and_any_float_dtype(monkeypatch, dtype):
    monkeypatch.setattr(norms_module, "_CHUNK", 7)  # chunk edges inside rows
    t = torch.randn(13, 11, generator=torch.Generator().manual_seed(9)).to(dtype)
    assert squared_norm(t) == pytest.approx(float((t.double() ** 2).sum()), rel=1e-6)


def test_weight_norms_cover_every_linear_and_skip_lora_factors():
    from peft import LoraConfig, inject_adapter_in_model

    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3, bias=False))
    plain = weight_norms(model)
    assert set(plain) == {"0", "2"}
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    assert plain["0"].weight_sq == pytest.approx(float((w * w).sum()))
    assert plain["0"].total_sq == pytest.approx(float((w * w).sum() + (b * b).sum()))
    assert plain["2"].bias_sq == 0.0 and (plain["2"].in_features, plain["2"].out_features) == (6, 3)
    wrapped = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "2"]), model)
    assert weight_norms(wrapped) == plain  # the base layers under the LoRA wrappers, not the factors
