"""What the benchmarks share in one run: studio settings, loaded managers, the base forward time."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench import common
from bench.subjects import BLOCK_TRUE, Subject, build_pipeline_folder, cache_root, forward_inputs, lora_file

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
STACK_RANK = 64
STACK_SIZE = 4


class Context:
    """Lazily built subjects shared by the benchmarks of one ``python -m bench`` run."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device or os.environ.get("BENCH_DEVICE", "cpu")
        self.repeats = REPEATS
        self.tmp = Path(tempfile.mkdtemp(prefix="wan-bench-"))
        self._managers: dict[str, Any] = {}
        self._inputs: dict[str, dict[str, Any]] = {}
        self.base_forward_samples: list[float] = []
        self.keys: dict[str, float] = {}

    # ------------------------------------------------------------------ studio objects
    def settings(self):
        from studio.settings import Settings

        return Settings(
            lora_dirs=(cache_root() / "loras",),
            outputs_dir=self.tmp / "outputs",
            cache_dir=cache_root() / "studio-cache",
            model=None,
            dtype=os.environ.get("BENCH_DTYPE") or None,  # default: float32 on the CPU, bf16 on a GPU
        )

    def manager(self, subject: Subject):
        """A PipelineManager with ``subject``'s pipeline folder loaded (built and saved on first use)."""
        if subject.name not in self._managers:
            from studio.engine.manager import PipelineManager

            common.status(f"building/loading the {subject.name} pipeline")
            folder = build_pipeline_folder(subject)
            mgr = PipelineManager(self.settings(), device=self.device)
            mgr.load_model(str(folder))
            self._managers[subject.name] = mgr
        return self._managers[subject.name]

    def drop(self, subject: Subject) -> None:
        mgr = self._managers.pop(subject.name, None)
        if mgr is not None:
            mgr.unload()
        self._inputs.pop(subject.name, None)
        common.collect()

    def stack_files(self, subject: Subject, n: int = STACK_SIZE, rank: int = STACK_RANK, first_seed: int = 1):
        return [lora_file(subject, rank, seed=first_seed + i) for i in range(n)]

    def stack(self, paths, weights):
        from studio.stack.schema import Stack, StackEntry

        return Stack(
            entries=[
                StackEntry.single(p, w, w, name=f"lora{i}", id=f"e{i}")
                for i, (p, w) in enumerate(zip(paths, weights, strict=True))
            ]
        )

    # ------------------------------------------------------------------ forwards
    def inputs(self, subject: Subject) -> dict[str, Any]:
        if subject.name not in self._inputs:
            self._inputs[subject.name] = forward_inputs(subject.config, device=self.device)
        return self._inputs[subject.name]

    def forward(self, model, subject: Subject = BLOCK_TRUE) -> None:
        with torch.no_grad():
            model(**self.inputs(subject))

    def base_forward_s(self) -> float:
        """Median time of one forward of one block-true expert without LoRAs (measured once, reused)."""
        if not self.base_forward_samples:
            from studio.engine import lora_ops

            mgr = self.manager(BLOCK_TRUE)
            model = mgr.pipe.transformer
            if lora_ops.lora_layers(model):
                raise RuntimeError("measure the base forward before loading LoRAs")
            common.status("timing the base forward of the block-true expert")
            self.base_forward_samples = common.samples(lambda: self.forward(model), self.repeats)
        return common.median(self.base_forward_samples)

    def close(self) -> None:
        for name in list(self._managers):
            self._managers.pop(name).unload()
        shutil.rmtree(self.tmp, ignore_errors=True)


def standalone(run) -> None:
    """Run one benchmark alone: its table, then its ``key=value`` line."""
    common.setup()
    ctx = Context()
    try:
        common.emit(common.machine_line())
        text, keys = run(ctx)
        common.emit(text)
        common.emit(common.kv_line({k: v for k, v in keys.items() if not k.startswith("_")}))
    finally:
        ctx.close()
