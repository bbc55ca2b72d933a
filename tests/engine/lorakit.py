"""Helpers shared by the engine's LoRA tests (imported as ``lorakit``: tests/engine is on sys.path).

The demo transformer in a chosen dtype, forward inputs, diffusers' own loader for
comparisons, and bit-for-bit comparisons of base weights.
"""

from __future__ import annotations

import math
import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from studio.stack.schema import RenderSettings

# a small render on the demo model: 4 steps (two per expert) with guidance on both
SETTINGS = RenderSettings(
    prompt="a cat walking",
    negative_prompt="blurry",
    width=32,
    height=32,
    frames=9,
    steps=4,
    guidance=3.0,
    guidance_low=2.0,
    shift=5.0,
    seed=42,
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# When two paths round differently, outputs agree to 1e-5 in float32; in bf16/fp16 to a few
# units in the last place (ulp) of the output's largest magnitude (bf16 keeps 8 significant
# bits, fp16 11; the demo's 2 blocks compound a few roundings: measured ≤ 3 bf16 ulps).
ULPS = 4
_MANTISSA = {torch.bfloat16: 7, torch.float16: 10}


def tolerance(expected: torch.Tensor, dtype: torch.dtype) -> float:
    """The absolute difference two roundings of the same computation may show in ``dtype``."""
    if dtype not in _MANTISSA:
        return 1e-5
    top = max(float(expected.detach().abs().max()), 2.0**-8)
    return ULPS * 2.0 ** (math.floor(math.log2(top)) - _MANTISSA[dtype])


def transformer(folder, dtype: torch.dtype = torch.float32):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype).eval()


def inputs(config, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, config.in_channels, 3, 8, 8, generator=gen).to(dtype),
        "timestep": torch.tensor([700]),
        "encoder_hidden_states": torch.randn(1, 12, config.text_dim, generator=gen).to(dtype),
        "return_dict": False,
    }


@torch.no_grad()
def out(model, model_inputs) -> torch.Tensor:
    return model(**model_inputs)[0]


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual, expected, atol=tolerance(expected, dtype), rtol=0)


def diffusers_load(model, state_dict, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_lora_adapter(dict(state_dict), adapter_name=name, prefix="transformer")


def layer_state(model) -> dict:
    return {
        layer_name: (list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
        for layer_name, layer in model.named_modules()
        if isinstance(layer, BaseTunerLayer)
    }


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base model's tensors by their plain names (a LoRA-wrapped layer adds ``base_layer.``)."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


def differing(model, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Base tensors of ``model`` that are not bit-identical to ``reference``: name → max abs error."""
    now = base_weights(model)
    assert now.keys() == reference.keys()
    return {
        k: (now[k].double() - reference[k].double()).abs().max().item()
        for k in reference
        if not torch.equal(now[k], reference[k])
    }


def assert_bit_identical(model, reference: dict[str, torch.Tensor]) -> None:
    bad = differing(model, reference)
    assert not bad, f"{len(bad)} of {len(reference)} base tensors changed, max error {max(bad.values()):.3g}"
