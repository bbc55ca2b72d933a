"""``python -m bench``: benchmarks 1–6, 8 (the stack doctor), 9 (the training step), 10 (schedules) and 11 (batches)
in order, each table, then one combined ``key=value`` line.

The GPU check (7) runs on its own: ``bench/gpu_check.sh WHEELS_DIR`` (see bench/README.md).
"""

from __future__ import annotations

import time

from bench import (
    add_lora,
    batch,
    cold_start,
    common,
    doctor,
    fuse,
    memory,
    per_step,
    schedule,
    train,
    weight_change,
)
from bench.context import Context
from bench.subjects import BLOCK_TRUE

# Targets of the issue: each value must be at most this.
TARGETS = {
    "weight_change_ratio": 0.01,
    "add_lora_ratio": 3.0,
    "fuse_ratio": 1.0,
    "fused_overhead": 0.02,
    "unfused4_overhead": 0.15,
    "rss_growth": 0.05,
    "doctor_s": 1.0,
    "train_step_ratio": 1.15,
    "schedule_step_ratio": 0.01,
    "partial_fuse_overhead": 0.08,
    "scene_switch_ratio": 3.0,
    "ray_overhead": 0.15,
}
MAIN_KEYS = (
    "weight_change_ratio",
    "add_lora_ratio",
    "fuse_ratio",
    "fused_overhead",
    "unfused4_overhead",
    "rss_growth",
    "doctor_s",
    "train_step_ratio",
    "schedule_step_ratio",
    "partial_fuse_overhead",
    "scene_switch_ratio",
    "ray_overhead",
    "cold_start_s",
    "first_render_s",
)


def main() -> None:
    common.setup()
    started = time.perf_counter()
    ctx = Context()
    keys: dict[str, float] = {}
    try:
        common.emit(common.machine_line())
        common.emit("")
        for module in (weight_change, add_lora, fuse, per_step, doctor, schedule):
            text, found = module.run(ctx)
            keys.update(found)
            common.emit(text)
        ctx.drop(BLOCK_TRUE)
        for module in (memory, cold_start, train, batch):
            text, found = module.run(ctx)
            keys.update(found)
            common.emit(text)
    finally:
        ctx.close()
    total = time.perf_counter() - started
    rows = []
    for key, target in TARGETS.items():
        value = keys.get(key, float("nan"))
        rows.append([key, common.fmt(value), f"≤ {target:g}", "yes" if value <= target else "NO"])
    for key in ("cold_start_s", "first_render_s"):
        rows.append([key, common.fmt(keys.get(key, float("nan"))), "(absolute)", "-"])
    common.emit(common.table(f"Summary (whole run {total:.0f} s)", ["key", "value", "target", "met"], rows))
    ordered = {k: keys[k] for k in MAIN_KEYS if k in keys}
    extra = {k: v for k, v in keys.items() if k not in ordered and not k.startswith("_")}
    common.emit(common.kv_line({**ordered, **extra, "bench_total_s": total}))


if __name__ == "__main__":
    main()
