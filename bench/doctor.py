"""8. The stack doctor: a full report for a 4-LoRA rank-64 stack on the block-true model.

``doctor_s`` (target ≤ 1 s) is one cold report: nothing about the files cached, so each of
the 4 files is read, converted and matched like a load, its ‖ΔW‖² and the 6 pair inner
products per expert are taken from the factors (one Gram matrix of the concatenated factors per module, no dense ΔW), and the cost
is counted against the VRAM estimator. The library is the 4 files themselves (each LoRA
compared with the other 3). The base-weight norms are read when the model loads; their
time is shown as ``doctor_norms_s``. ``doctor_cpu_s`` is the cold report's CPU time (on a
shared machine the wall time also counts other processes). ``doctor_warm_s`` is the report again after a weight
change (everything cached: no file is read).

Run alone: ``python -m bench.doctor``.
"""

from __future__ import annotations

import shutil

from bench import common
from bench.context import STACK_RANK, STACK_SIZE, Context, standalone
from bench.subjects import BLOCK_TRUE, cache_root

TITLE = f"8. Stack doctor: {STACK_SIZE} LoRAs of rank {STACK_RANK} on the block-true model (both experts)"
TARGET_S = 1.0


def _library(ctx: Context):
    """A folder holding exactly the stack's files (copied once into the bench cache)."""
    folder = cache_root() / "doctor-library"
    folder.mkdir(exist_ok=True)
    paths = []
    for path in ctx.stack_files(BLOCK_TRUE):
        target = folder / path.name
        if not target.exists() or target.stat().st_size != path.stat().st_size:
            shutil.copyfile(path, target)
        paths.append(target)
    return folder, paths


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.doctor.examine import Doctor
    from studio.engine.norms import pipeline_norms
    from studio.service import Studio
    from studio.stack.schema import RenderSettings

    mgr = ctx.manager(BLOCK_TRUE)
    folder, paths = _library(ctx)
    settings = ctx.settings().with_(lora_dirs=[folder], cache_dir=ctx.tmp / "doctor-studio")
    studio = Studio(settings, manager=mgr)
    studio.library()  # the library index (headers), as the UI has it before the panel asks
    render = RenderSettings(width=832, height=480, frames=81, steps=40, guidance=3.5)
    stack = ctx.stack(paths, [1.0] * STACK_SIZE)
    reweighted = ctx.stack(paths, [0.5, 1.0, 1.5, -1.0])

    common.status("timing the base-weight norms (done once at model load)")
    norms_s = common.median(common.samples(lambda: pipeline_norms(mgr.pipe), 1))
    common.status("timing cold doctor reports")
    cold, cold_cpu, warm = [], [], []
    for i in range(ctx.repeats):
        studio.doctor_engine = Doctor(ctx.tmp / f"doctor-cold-{i}")
        wall, cpu = common.timed_cpu(lambda: studio.doctor(render, stack))
        cold.append(wall)
        cold_cpu.append(cpu)
        reads = studio.doctor_engine.files_read
        warm.append(common.timed(lambda: studio.doctor(render, reweighted)))
        assert studio.doctor_engine.files_read == reads, "a weight change must read no file"
    report = studio.doctor(render, stack)
    med = common.median
    rows = [
        ["cold report (4 files read, 4 norms + 6 pairs × 2 experts, cost)", common.ms(med(cold))],
        ["  the same, CPU time of this process (all threads)", common.ms(med(cold_cpu))],
        ["after a weight change (cached: no file read)", common.ms(med(warm))],
        ["base-weight norms of both experts (at model load)", common.ms(norms_s)],
    ]
    pairs = [p.cosine for p in report.pairs if p.cosine is not None]
    text = common.table(
        TITLE + f"; median of {ctx.repeats}; target doctor_s ≤ {TARGET_S:g} s",
        ["what", "ms"],
        rows,
    )
    text += (
        f"\n{len(report.loras)} findings, {len(report.pairs)} pairs (|cosine| ≤ {max(map(abs, pairs)):.3f} for "
        f"these random LoRAs); {report.summary()[:160]}"
    )
    keys = {
        "doctor_s": med(cold),
        "doctor_cpu_s": med(cold_cpu),
        "doctor_warm_s": med(warm),
        "doctor_norms_s": norms_s,
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
