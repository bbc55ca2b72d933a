"""3. Fusing: fuse a 4-LoRA stack into both experts, vs one forward of one expert; and unfusing exactly.

Target: ≤ 1 forward. Measured at the benchmark token count (≥ 1,024): a fuse costs
2·ΣR·in·out per module per expert against 2·tokens·in·out for a forward, so the ratio
only means something at a realistic token count.

Unfusing restores a host backup of each touched weight (``studio.engine.fuse``): the first
fuse makes the backup (a copy of the touched weights, timed separately here), later fuses
reuse it, and every unfuse is a copy back. ``unfuse_exact=1`` says that after the timed
fuse → weight change → unfuse cycles every base tensor of both experts has the same bytes
(sha256) as before the first fuse; ``backup_per_touched`` is the backup's host bytes per
byte of touched weights.

Run alone: ``python -m bench.fuse``.
"""

from __future__ import annotations

import hashlib
import os

from bench import common
from bench.context import STACK_SIZE, Context, standalone
from bench.subjects import BLOCK_TRUE, token_count
from bench.weight_change import WEIGHTS, loaded_stack

TITLE = "3. Fusing a 4-LoRA stack (rank 64) into both experts of the block-true model"
# diffusers' fuse_lora is slow on CPU; one round is enough to show where it stands.
DIFFUSERS_ROUNDS = int(os.environ.get("BENCH_DIFFUSERS_FUSE_ROUNDS", "1"))


def _base_tensors(model) -> dict:
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}


def digest(model) -> str:
    """sha256 of every base tensor's bytes (names included), to check bit-exactness without a copy."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(_base_tensors(model).items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def touched_bytes(model) -> int:
    from studio.engine import lora_ops

    total = 0
    for layer in lora_ops.lora_layers(model):
        base = layer.get_base_layer()
        total += sum(t.numel() * t.element_size() for t in (base.weight, base.bias) if t is not None)
    return total


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine import lora_ops
    from studio.engine.fuse import keep_backup

    mgr, paths = loaded_stack(ctx)
    forward_s = ctx.base_forward_s()
    experts = [mgr.pipe.transformer, mgr.pipe.transformer_2]
    stack = ctx.stack(paths, [1.0] * STACK_SIZE)
    mgr.apply_stack(stack)
    names = list(mgr.active_weights()["transformer"])
    common.status("hashing the base weights before the first fuse")
    before = [digest(model) for model in experts]
    had_backups = sum(lora_ops.backup_bytes(model) for model in experts)

    def ops_fuse():
        for model in experts:
            lora_ops.fuse(model)

    def ops_unfuse():
        for model in experts:
            lora_ops.unfuse(model)

    def make_backups():  # what the first fuse into each layer does before writing
        for model in experts:
            for layer in lora_ops.lora_layers(model):
                keep_backup(layer)

    common.status("timing the backups, then fuse/unfuse (lora_ops) with a weight change between cycles")
    backup_s = common.timed(make_backups) if not had_backups else float("nan")
    fuse_s, unfuse_s = [], []
    for i in range(ctx.repeats):
        for model in experts:
            lora_ops.set_adapter_weights(model, dict(zip(names, WEIGHTS[i % 2], strict=True)))
        fuse_s.append(common.timed(ops_fuse))
        unfuse_s.append(common.timed(ops_unfuse))
    for model in experts:
        lora_ops.set_adapter_weights(model, dict.fromkeys(names, 1.0))
    backup = sum(lora_ops.backup_bytes(model) for model in experts)
    touched = sum(touched_bytes(model) for model in experts)
    common.status("hashing the base weights after the cycles")
    exact = [digest(model) for model in experts] == before

    common.status("timing fuse/unfuse through the manager")
    mgr_fuse_s, mgr_unfuse_s = [], []
    for _ in range(DIFFUSERS_ROUNDS):
        mgr_fuse_s.append(common.timed(lambda: mgr.apply_stack(stack, fuse=True)))
        mgr_unfuse_s.append(common.timed(lambda: mgr.apply_stack(stack, fuse=False)))

    med = common.median
    rows = [
        ["lora_ops.fuse ×2 (one addmm_ per module)", common.ms(med(fuse_s)), med(fuse_s) / forward_s],
        ["lora_ops.unfuse ×2 (copy the backups back)", common.ms(med(unfuse_s)), med(unfuse_s) / forward_s],
        ["making the backups ×2 (once, before the first fuse)", common.ms(backup_s), backup_s / forward_s],
        ["manager apply_stack(fuse=True)", common.ms(med(mgr_fuse_s)), med(mgr_fuse_s) / forward_s],
        ["manager apply_stack(fuse=False)", common.ms(med(mgr_unfuse_s)), med(mgr_unfuse_s) / forward_s],
        [f"one forward, one expert ({token_count(BLOCK_TRUE.config)} tokens)", common.ms(forward_s), 1.0],
    ]
    text = common.table(
        TITLE + f"; median of {ctx.repeats} (manager: {DIFFUSERS_ROUNDS}); target ≤ 1 forward",
        ["path", "ms", "× forward"],
        rows,
    )
    text += (
        f"\nBackups: {backup / 1e9:.2f} GB of host RAM for {touched / 1e9:.2f} GB of touched weights "
        f"({backup / max(touched, 1):.3f} byte per byte); after {ctx.repeats} fuse → weight change → unfuse "
        f"cycles the base weights are {'bit-identical' if exact else 'NOT bit-identical'} to the loaded ones.\n"
    )
    keys = {
        "fuse_ratio": med(fuse_s) / forward_s,
        "unfuse_exact": int(exact),
        "restore_ratio": med(unfuse_s) / forward_s,
        "backup_ratio": backup_s / forward_s,
        "backup_per_touched": backup / max(touched, 1),
        "backup_gb": backup / 1e9,
        "manager_fuse_ratio": med(mgr_fuse_s) / forward_s,
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
