"""A PEFT-layout LoRA state dict grouped by module and its factors checked, for peft layers and the room alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from studio.engine import lora_ops, lora_slots
from studio.engine.lora_state import checked_factors, group_by_module


def _refuse(key: str) -> Exception:
    return KeyError(f"refused {key}")


def _pair(rank: int = 2, inputs: int = 8, outputs: int = 6) -> dict[str, torch.Tensor]:
    return {"lora_A.weight": torch.ones(rank, inputs), "lora_B.weight": torch.ones(outputs, rank)}


def test_keys_group_by_module_under_the_prefix_only():
    sd = {
        "transformer.blocks.0.q.lora_A.weight": torch.zeros(2, 8),
        "transformer.blocks.0.q.lora_B.weight": torch.zeros(6, 2),
        "transformer.blocks.0.q.lora_B.bias": torch.zeros(6),
        "text_encoder.x.lora_A.weight": torch.zeros(2, 8),  # another component: skipped
    }
    modules = group_by_module(sd, "transformer", _refuse)
    assert list(modules) == ["blocks.0.q"]
    assert sorted(modules["blocks.0.q"]) == ["lora_A.weight", "lora_B.bias", "lora_B.weight"]
    assert list(group_by_module(sd, None, _refuse)) == ["transformer.blocks.0.q", "text_encoder.x"]


def test_a_tensor_of_another_kind_is_refused_by_the_callers_error():
    sd = {"transformer.blocks.0.q.lora_magnitude_vector": torch.zeros(6)}
    with pytest.raises(KeyError, match=r"refused blocks\.0\.q\.lora_magnitude_vector"):
        group_by_module(sd, "transformer", _refuse)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lora_A.weight": torch.ones(2, 8)}, "q: an incomplete LoRA pair"),
        (
            {"lora_A.weight": torch.ones(2, 8), "lora_B.weight": torch.ones(6, 3)},
            r"shapes \(2, 8\) and \(6, 3\)",
        ),
        (_pair(inputs=16), "shaped for a 16→6 layer but the layer is 8→6"),
    ],
)
def test_factors_that_do_not_fit_the_layer_are_refused_with_their_shapes(params, message):
    with pytest.raises(ValueError, match=message):
        checked_factors("q", params, 8, 6)
    a, b = checked_factors("q", _pair(), 8, 6)
    assert a.shape == (2, 8) and b.shape == (6, 2)


def test_peft_layers_and_the_room_refuse_the_same_misfit():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 6)

    bad = {f"transformer.q.{k}": v for k, v in _pair(inputs=16).items()}
    with pytest.raises(ValueError, match="shaped for a 16→6 layer"):
        lora_ops.load_adapter(Tiny(), bad, "x")
    bank = lora_slots.install(Tiny(), rows=4, slots=1)
    with pytest.raises(ValueError, match="shaped for a 16→6 layer"):
        bank.load(bad, "x")
