"""Shared fixtures for the LoRA library tests: the demo model and file writers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from studio.loras.synthetic import AI_TOOLKIT_PREFIXES, ALL_MODULES, IMAGE_ATTN_MODULES, TOP_MODULES
from studio.models.demo import TRANSFORMER_CONFIG, build_demo_pipeline


@pytest.fixture(scope="module")
def demo_pipe():
    """The tiny random Wan2.2 I2V demo pipeline, built once per test module."""
    return build_demo_pipeline()


@pytest.fixture
def config() -> dict:
    return dict(TRANSFORMER_CONFIG)


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", *, header_len: int | None = None) -> Path:
    """Write a safetensors-like file by hand (for broken and hostile files)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def raw_module_name(layout: str, module: str, expert: str = "high") -> str:
    """The key prefix a synthetic file of ``layout`` uses for a diffusers module name.

    ``expert`` picks the half of an ``ai_toolkit`` file (both experts in one file).
    """
    if layout == "peft":
        return f"transformer.{module}"
    if layout == "no_prefix_diffusers":
        return module
    table = {**ALL_MODULES, **IMAGE_ATTN_MODULES, **TOP_MODULES}
    if module.startswith("blocks."):
        _, block, inner = module.split(".", 2)
        orig = f"blocks.{block}.{table[inner]}"
    else:
        orig = table[module]
    if layout in ("musubi", "lokr", "loha", "videox_fun"):
        prefix = {"musubi": "lora_unet_", "videox_fun": "lora_unet__"}.get(layout, "lycoris_")
        return prefix + orig.replace(".", "_")
    if layout in ("no_prefix", "diffsynth"):
        return orig
    if layout == "peft_wan":
        return f"base_model.model.{orig}"
    if layout == "ai_toolkit":
        return AI_TOOLKIT_PREFIXES[expert] + orig
    return f"diffusion_model.{orig}"


def reference_delta(
    raw: dict[str, torch.Tensor], layout: str, module: str, expert: str = "high"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW (out × in) and bias a LoRA file means for one module, computed straight from its tensors."""
    name = raw_module_name(layout, module, expert)
    raw = {k.replace(".default.weight", ".weight"): v for k, v in raw.items()}  # PEFT adapter names
    get = raw.get
    alpha_t = get(f"{name}.alpha")
    alpha = float(alpha_t) if alpha_t is not None else None
    bias = get(f"{name}.diff_b", get(f"{name}.lora_B.bias"))
    if f"{name}.lokr_w1" in raw:
        w1 = raw[f"{name}.lokr_w1"].double()
        if f"{name}.lokr_w2" in raw:
            w2, decomposed_rank = raw[f"{name}.lokr_w2"].double(), None
        else:
            w2 = raw[f"{name}.lokr_w2_a"].double() @ raw[f"{name}.lokr_w2_b"].double()
            decomposed_rank = raw[f"{name}.lokr_w2_b"].shape[0]
        scale = alpha / decomposed_rank if (alpha is not None and decomposed_rank) else 1.0
        return torch.kron(w1, w2) * scale, bias
    if f"{name}.hada_w1_a" in raw:
        w1 = raw[f"{name}.hada_w1_a"].double() @ raw[f"{name}.hada_w1_b"].double()
        w2 = raw[f"{name}.hada_w2_a"].double() @ raw[f"{name}.hada_w2_b"].double()
        rank = raw[f"{name}.hada_w1_b"].shape[0]
        return w1 * w2 * (alpha / rank if alpha is not None else 1.0), bias
    if f"{name}.diff" in raw and f"{name}.lora_down.weight" not in raw:
        return raw[f"{name}.diff"].double(), bias
    down = get(f"{name}.lora_A.weight", get(f"{name}.lora_down.weight"))
    up = get(f"{name}.lora_B.weight", get(f"{name}.lora_up.weight"))
    assert down is not None and up is not None, f"no LoRA pair for {name}"
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    return scale * (up.double() @ down.double()), bias


def assert_module_delta(
    pipe,
    adapter: str,
    module: str,
    delta: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    weight: float = 1.0,
    component: str = "transformer",
) -> None:
    """With only ``adapter`` active at ``weight``, ``module(x) == base(x) + weight·(x @ ΔWᵀ + bias)``."""
    transformer = getattr(pipe, component)
    transformer.set_adapters([adapter], weights=[weight])
    layer = transformer.get_submodule(module)
    base = layer.get_base_layer()
    x = torch.randn(5, base.in_features, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = layer(x) - base(x)
    expected = x.double() @ delta.T
    if bias is not None:
        expected = expected + bias.double()
    torch.testing.assert_close(got.double(), weight * expected, atol=2e-5, rtol=1e-4)


@pytest.fixture
def tools() -> SimpleNamespace:
    """The helpers above, as a fixture (so test modules need not import conftest)."""
    return SimpleNamespace(
        write_raw=write_raw,
        raw_module_name=raw_module_name,
        reference_delta=reference_delta,
        assert_module_delta=assert_module_delta,
    )
