"""How many bytes a LoRA stack adds to an expert: rank·(in+out) per targeted Linear; and the host copy
of the touched weights that fusing keeps so unfusing is exact (:mod:`studio.engine.fuse`)."""

from __future__ import annotations

from collections.abc import Iterable

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


def _touched_block_params(kind: str, dim: int, ffn: int) -> int:
    """Weight + bias elements of the Linears ``kind`` targets in one block (what a fuse writes into)."""
    if kind in ("self_attn", "cross_attn"):
        return 4 * (dim * dim + dim)  # to_q, to_k, to_v, to_out.0 (cross-attention k/v read dim-wide text)
    if kind == "ffn":
        return (dim * ffn + ffn) + (ffn * dim + dim)
    return 0


def _touched_top_params(kind: str, shapes: ModelShapes) -> int:
    from studio.loras.synthetic import top_level_shapes

    top = top_level_shapes(shapes.transformer)
    names = [n for n in top if n.startswith("condition_embedder")] if kind == "embeddings" else []
    names += ["proj_out"] if kind == "head" else []
    return sum(top[n][0] * top[n][1] + top[n][1] for n in names)


def fuse_backup_bytes(shapes: ModelShapes, loras: Iterable[LoraLoad], *, element_size: int = 2) -> int:
    """Host bytes of one expert's fuse backups: every weight and bias the LoRAs touch, once.

    ``loras`` are the LoRAs loaded into that expert. Modules are counted once however many
    LoRAs touch them; LoRAs on part of the blocks are assumed to touch different blocks (an
    upper bound). The backups live while the LoRAs are loaded.
    """
    t = shapes.transformer
    dim, ffn, layers = shapes.dim, int(t["ffn_dim"]), int(t["num_layers"])
    blocks_of: dict[str, int] = {}
    for lora in loras:
        for kind in set(lora.module_kinds):
            blocks_of[kind] = min(layers, blocks_of.get(kind, 0) + min(lora.blocks or layers, layers))
    elements = sum(
        _touched_block_params(kind, dim, ffn) * blocks + _touched_top_params(kind, shapes)
        for kind, blocks in blocks_of.items()
    )
    return elements * element_size
