"""2. Adding a LoRA: time to add one LoRA file to a loaded model, vs the time to read the file's bytes.

Target: ≤ 3× the read, for rank 64. Subject: the Wan2.1 1.3B block shape (the shape of
the reference measurement), LoRAs of rank 32/64/128 in the original (``diffusion_model.``)
layout. "Add" is the whole way from the file to an active adapter:

- ``lora_ops``: the studio's reader/converter (``prepare_lora``: header checks, NaN/Inf
  check, key conversion, match report) + ``lora_ops.load_adapter`` + ``set_adapter_weights``;
- ``manager (as is)``: ``PipelineManager.apply_stack`` with one new entry (``prepare_lora`` +
  diffusers ``load_lora_weights`` + ``set_adapters``);
- ``diffusers``: ``pipe.load_lora_weights(path, use_safetensors=True)`` (diffusers reads and
  converts the file itself).

Each file's sha256 is already in the studio's cache (it is hashed the first time a file is
seen; that is a one-off per file, shown in its own column). Every add is timed back to back
with a read of the same file, and the ratio is the median of those pairs.

Run alone: ``python -m bench.add_lora``.
"""

from __future__ import annotations

import os

from bench import common
from bench.context import Context, standalone
from bench.subjects import WAN13, lora_file

TITLE = "2. Adding one LoRA to a loaded model (Wan2.1 1.3B shape)"
RANKS = (32, 64, 128)


def read_bytes(path) -> None:
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as f:
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = f.readinto(view[pos:])
            if not n:
                break
            pos += n
        view.release()


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine import lora_ops
    from studio.loras.match import prepare_lora
    from studio.stack.schema import Stack

    mgr = ctx.manager(WAN13)
    pipe, model = mgr.pipe, mgr.pipe.transformer
    cache_dir = mgr.settings.cache_dir
    rows, keys = [], {}
    for rank in RANKS:
        path = lora_file(WAN13, rank, seed=100 + rank)
        mb = os.path.getsize(path) / 1e6
        read_bytes(path)  # into the page cache
        # The first time a file is seen its sha256 is computed from the bytes read (then cached).
        hash_s = common.timed(lambda path=path: prepare_lora(path, model, cache_dir=None, hash_file=True))
        prepare_lora(path, model, cache_dir=cache_dir)  # the studio's sha256 cache now knows the file
        repeats = max(ctx.repeats, 5) if rank == 64 else ctx.repeats
        common.status(f"timing adds of the rank-{rank} file ({mb:.0f} MB) × {repeats}")

        def ops_add(path=path):
            prepared = prepare_lora(path, model, cache_dir=cache_dir)
            lora_ops.load_adapter(model, prepared.state_dict, "bench_add")
            lora_ops.set_adapter_weights(model, {"bench_add": 1.0})

        def ops_remove():
            lora_ops.delete_adapters(model, ["bench_add"])

        prepared = prepare_lora(path, model, cache_dir=cache_dir)

        def load_only(state=prepared.state_dict):
            lora_ops.load_adapter(model, state, "bench_add")

        stack = ctx.stack([path], [1.0])

        def manager_add(stack=stack):
            mgr.apply_stack(stack)

        def manager_remove():
            mgr.apply_stack(Stack())

        def diffusers_add(path=path):
            pipe.load_lora_weights(str(path), adapter_name="bench_raw", use_safetensors=True)

        def diffusers_remove():
            model.unload_lora()
            common.collect()

        reader = (None, lambda path=path: read_bytes(path), None)
        times = common.interleaved(
            {
                "read_ops": reader,
                "lora_ops": (None, ops_add, ops_remove),
                "read_load": reader,
                "load_only": (None, load_only, ops_remove),
                "read_mgr": reader,
                "manager": (None, manager_add, manager_remove),
                "read_raw": reader,
                "diffusers": (None, diffusers_add, diffusers_remove),
            },
            repeats,
        )
        del prepared
        common.collect()
        ops = common.Pair(times["lora_ops"], times["read_ops"])
        load = common.Pair(times["load_only"], times["read_load"])
        manager = common.Pair(times["manager"], times["read_mgr"])
        raw = common.Pair(times["diffusers"], times["read_raw"])
        read_s = common.median(times["read_ops"] + times["read_load"] + times["read_mgr"] + times["read_raw"])
        rows.append(
            [
                rank,
                f"{mb:.0f}",
                common.ms(read_s),
                f"{common.ms(ops.num)} ({ops.ratio:.2f}×)",
                f"{common.ms(load.num)} ({load.ratio:.2f}×)",
                f"{common.ms(manager.num)} ({manager.ratio:.1f}×)",
                f"{common.ms(raw.num)} ({raw.ratio:.1f}×)",
                common.ms(hash_s),
            ]
        )
        if rank == 64:
            keys = {
                "add_lora_ratio": ops.ratio,
                "add_lora_load_only_ratio": load.ratio,
                "manager_add_lora_ratio": manager.ratio,
                "raw_add_lora_ratio": raw.ratio,
            }
    text = common.table(
        TITLE
        + f"; median ms (× the read of the same file, paired); {ctx.repeats}–5 rounds; target ≤ 3× at rank 64",
        [
            "rank",
            "MB",
            "read bytes",
            "lora_ops: prepare_lora + load_adapter",
            "load_adapter alone",
            "manager (as is)",
            "diffusers load_lora_weights",
            "first sight (+sha256)",
        ],
        rows,
    )
    return text, keys


if __name__ == "__main__":
    standalone(run)
