"""Synthetic LoRA files that fit a given Wan transformer config.

Used by the tests and the benchmarks: they write real ``.safetensors`` files in the
key layouts that real Wan LoRAs use, with shapes taken from a transformer config
(e.g. the demo model's ``transformer/config.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

# diffusers module name (inside a block) -> original/ComfyUI module name
ATTN_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
}
FFN_MODULES = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
ALL_MODULES = {**ATTN_MODULES, **FFN_MODULES}


def module_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-targetable Linear in one block."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    ffn = int(config["ffn_dim"])
    shapes = {name: (dim, dim) for name in ATTN_MODULES}
    shapes["ffn.net.0.proj"] = (dim, ffn)
    shapes["ffn.net.2"] = (ffn, dim)
    return shapes


def make_lora_tensors(
    config: Mapping[str, Any],
    *,
    rank: int = 4,
    layout: str = "peft",
    modules: Iterable[str] | None = None,
    blocks: Iterable[int] | None = None,
    alpha: float | None = None,
    scale: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random LoRA A/B matrices for ``modules`` of ``blocks``, keyed in ``layout``.

    Layouts: ``peft`` (``transformer.blocks.N.attn1.to_q.lora_A.weight``) and
    ``original`` (``diffusion_model.blocks.N.self_attn.q.lora_A.weight``, with
    ``.alpha`` when ``alpha`` is given).
    """
    shapes = module_shapes(config)
    modules = list(modules) if modules is not None else list(ALL_MODULES)
    blocks = list(blocks) if blocks is not None else list(range(int(config["num_layers"])))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for block in blocks:
        for module in modules:
            fan_in, fan_out = shapes[module]
            a = (torch.randn(rank, fan_in, generator=gen) * scale).to(dtype)
            b = (torch.randn(fan_out, rank, generator=gen) * scale).to(dtype)
            if layout == "peft":
                prefix = f"transformer.blocks.{block}.{module}"
                tensors[f"{prefix}.lora_A.weight"] = a
                tensors[f"{prefix}.lora_B.weight"] = b
            elif layout == "original":
                prefix = f"diffusion_model.blocks.{block}.{ALL_MODULES[module]}"
                tensors[f"{prefix}.lora_A.weight"] = a
                tensors[f"{prefix}.lora_B.weight"] = b
                if alpha is not None:
                    tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
            else:
                raise ValueError(f"unknown layout {layout!r}")
    return tensors


def write_lora(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path
