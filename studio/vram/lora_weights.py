"""How many bytes a LoRA stack adds to an expert: rank·(in+out) per targeted Linear."""

from __future__ import annotations

from studio.models.shapes import (
    ModelShapes,
)
from studio.vram.types import LoraLoad

# ---------------------------------------------------------------------------
# LoRA weights
# ---------------------------------------------------------------------------


def _lora_block_params(kind: str, dim: int, ffn: int, text_dim: int) -> int:
    """rank-1 parameter count (in + out summed) of the Linears ``kind`` targets in one block."""
    if kind == "self_attn":
        return 4 * (dim + dim)
    if kind == "cross_attn":
        return 4 * (dim + dim)
    if kind == "ffn":
        return (dim + ffn) + (ffn + dim)
    return 0  # image_cross_attn: Wan2.2 has no add_k/v_proj; diffusers drops those keys


def _lora_top_params(kind: str, shapes: ModelShapes) -> int:
    from studio.loras.synthetic import top_level_shapes

    top = top_level_shapes(shapes.transformer)
    if kind == "embeddings":
        return sum(i + o for name, (i, o) in top.items() if name.startswith("condition_embedder"))
    if kind == "head":
        i, o = top["proj_out"]
        return i + o
    return 0


def lora_bytes(shapes: ModelShapes, lora: LoraLoad, *, element_size: int = 2) -> int:
    """Bytes of one LoRA in one expert (model dtype: PEFT layers take the base layer's dtype)."""
    t = shapes.transformer
    dim = shapes.dim
    ffn = int(t["ffn_dim"])
    layers = int(t["num_layers"])
    blocks = min(lora.blocks or layers, layers)
    per_block = sum(
        _lora_block_params(k, dim, ffn, int(t.get("text_dim", 4096))) for k in set(lora.module_kinds)
    )
    top = sum(_lora_top_params(k, shapes) for k in set(lora.module_kinds))
    return lora.rank * (per_block * blocks + top) * element_size
