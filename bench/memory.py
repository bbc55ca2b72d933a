"""5. Memory over swaps: resident memory after 50 cycles of swapping LoRAs in and out vs after the first.

Target: growth ≤ 5%. Subject: the Wan2.1 1.3B block shape. The stack holds two LoRAs: a
rank-64 one stays loaded throughout; the other is swapped each cycle for the next of three
files of rank 64, 128 and 32 (different sizes: the hard case for the heap), in turn and
ending on the first one, so the first and the last reading hold the same LoRAs. The model
always keeps LoRA layers, so a swap goes through adapter *deletion* (where diffusers is
known to creep), not a full unload. The first and the last cycle end with a small forward.
Resident memory is read after the first and after the last cycle (after ``gc.collect()``);
growth = (last − first) / first. Two paths, each in its own pass:

- ``manager (as is)``: ``PipelineManager.apply_stack`` (diffusers ``load_lora_weights`` +
  ``delete_adapters``/``unload_lora`` + ``gc.collect``);
- ``lora_ops``: ``prepare_lora`` + ``lora_ops.load_adapter``, ``lora_ops.delete_adapters``
  (which unwraps emptied layers and gives freed heap pages back with ``malloc_trim``).

Run alone: ``python -m bench.memory``.
"""

from __future__ import annotations

import gc
import os

import torch

from bench import common
from bench.context import Context, standalone
from bench.subjects import WAN13, forward_inputs, lora_file

TITLE = "5. Resident memory over LoRA swaps (Wan2.1 1.3B shape; one LoRA kept, one swapped per cycle, ranks 64/128/32)"
CYCLES = int(os.environ.get("BENCH_MEMORY_CYCLES", "50"))
RANK = 64
SWAP_RANKS = (64, 128, 32)  # different sizes each cycle: the hardest case for the heap


def swap_order(cycles: int) -> list[int]:
    """Which swap file each cycle loads: 0, 1, 2, 0, 1, 2, … ending on 0, never the same twice in a row.

    The first and the last cycle then leave the same two LoRAs loaded, so the two readings
    differ only by what the swaps left behind.
    """
    order = [c % 3 for c in range(cycles)]
    order[-1] = 0
    if cycles >= 2 and order[-2] == 0:
        order[-2] = 1 if cycles < 3 or order[-3] != 1 else 2
    return order


def _rss_after_gc() -> int:
    gc.collect()
    return common.rss_bytes()


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine import lora_ops
    from studio.loras.match import prepare_lora
    from studio.stack.schema import Stack

    mgr = ctx.manager(WAN13)
    model = mgr.pipe.transformer
    keeper = lora_file(WAN13, RANK, seed=200)
    swaps = [lora_file(WAN13, rank, seed=201 + i) for i, rank in enumerate(SWAP_RANKS)]
    small = forward_inputs(WAN13.config, latent=(1, 8, 8), text_tokens=16, device=ctx.device)

    def small_forward():
        with torch.no_grad():
            model(**small)

    results = {}

    common.status(f"memory: {CYCLES} swap cycles through the manager (as is)")
    stacks = [ctx.stack([keeper, path], [1.0, 0.8]) for path in swaps]
    order = swap_order(CYCLES)
    first = last = 0
    elapsed = []
    for cycle in range(CYCLES):
        elapsed.append(common.timed(lambda cycle=cycle: mgr.apply_stack(stacks[order[cycle]])))
        if cycle in (0, CYCLES - 1):
            small_forward()
        if cycle == 0:
            first = _rss_after_gc()
    last = _rss_after_gc()
    results["manager (as is)"] = (first, last, common.median(elapsed))
    mgr.apply_stack(Stack())
    common.collect()

    common.status(f"memory: {CYCLES} swap cycles through lora_ops")
    cache_dir = mgr.settings.cache_dir
    lora_ops.load_adapter(model, prepare_lora(keeper, model, cache_dir=cache_dir).state_dict, "keeper")
    swapped: list[str] = []
    elapsed = []

    def ops_cycle(cycle: int) -> None:
        if swapped:
            lora_ops.delete_adapters(model, swapped)
            swapped.clear()
        name = f"swap{cycle}"
        prepared = prepare_lora(swaps[order[cycle]], model, cache_dir=cache_dir)
        lora_ops.load_adapter(model, prepared.state_dict, name)
        swapped.append(name)
        lora_ops.set_adapter_weights(model, {"keeper": 1.0, name: 0.8})

    for cycle in range(CYCLES):
        elapsed.append(common.timed(lambda cycle=cycle: ops_cycle(cycle)))
        if cycle in (0, CYCLES - 1):
            small_forward()
        if cycle == 0:
            first = _rss_after_gc()
    last = _rss_after_gc()
    results["lora_ops"] = (first, last, common.median(elapsed))
    lora_ops.delete_adapters(model, ["keeper", *swapped])

    rows = []
    growth = {}
    for name, (first, last, cycle_s) in results.items():
        growth[name] = (last - first) / first
        rows.append(
            [
                name,
                f"{first / 2**20:.0f}",
                f"{last / 2**20:.0f}",
                f"{(last - first) / 2**20:+.0f}",
                f"{growth[name] * 100:+.1f}%",
                f"{(last - first) / 2**20 / max(1, CYCLES - 1):+.1f}",
                common.ms(cycle_s),
            ]
        )
    text = common.table(
        TITLE + f"; {CYCLES} cycles; target ≤ +5%",
        ["path", "RSS after 1 (MiB)", f"after {CYCLES} (MiB)", "Δ MiB", "growth", "MiB / cycle", "ms / swap"],
        rows,
    )
    keys = {"rss_growth": growth["lora_ops"], "manager_rss_growth": growth["manager (as is)"]}
    return text, keys


if __name__ == "__main__":
    standalone(run)
