"""Engine test fixtures: PEFT-layout LoRA state dicts for the demo transformer, and a dtype per test."""

from __future__ import annotations

import pytest
from lorakit import DTYPES, transformer

from studio.loras.match import prepare_lora
from studio.loras.synthetic import make_lora_tensors, write_lora

LORA_SPECS = {
    "style": dict(rank=4, layout="original", seed=1),
    "detail": dict(rank=8, layout="original", seed=2, modules=["attn1.to_q", "ffn.net.2", "attn2.to_v"]),
    "motion": dict(rank=6, layout="original", seed=3, alpha=3.0),
    "speed": dict(rank=4, layout="lightx2v", seed=4),  # lora_down/up + diff_b (LoRA biases) + head diff
    "lokr": dict(rank=4, layout="lokr", seed=5),
    "loha": dict(rank=4, layout="loha", seed=6),
}


@pytest.fixture(scope="session")
def loras(demo_model_dir, demo_transformer_config, tmp_path_factory):
    """PEFT-layout state dicts made by the studio's own reader/converter from files in each layout."""
    folder = tmp_path_factory.mktemp("ops-loras")
    base = transformer(demo_model_dir)
    out = {}
    for name, spec in LORA_SPECS.items():
        path = write_lora(
            folder / f"{name}.safetensors", make_lora_tensors(demo_transformer_config, scale=0.3, **spec)
        )
        out[name] = prepare_lora(path, base, hash_file=False).state_dict
    return out


@pytest.fixture(params=list(DTYPES))
def dtype(request):
    """The LoRA paths run in float32 and in bf16 (what real renders use)."""
    return DTYPES[request.param]
