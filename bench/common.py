"""Shared helpers of the benchmarks: timing (medians, interleaved pairs), memory, tables, output lines.

These machines are shared and noisy, so every ratio is measured as *pairs* taken
back to back (numerator, denominator, numerator, ...) and reported as the median of
the per-pair ratios, next to the medians of each side.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def setup() -> None:
    """Threads, quiet libraries, no denormals: the same conditions for every benchmark."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore")
    from studio.engine.manager import quiet_libraries

    quiet_libraries()
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    import diffusers
    import peft

    info = {
        "cpu": cpu_model(),
        "nproc": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "ram_gib": f"{_total_ram() / 2**30:.0f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "load average": load_average(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line() -> str:
    return "machine: " + ", ".join(f"{k} {v}" for k, v in machine().items())


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc/self/statm``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def samples(
    fn: Callable[[], Any],
    repeats: int,
    *,
    before: Callable[[], Any] | None = None,
    after: Callable[[], Any] | None = None,
) -> list[float]:
    """``repeats`` timings of ``fn``; ``before``/``after`` run untimed around each."""
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        out.append(timed(fn))
        if after is not None:
            after()
    return out


@dataclass
class Pair:
    numerator: list[float]
    denominator: list[float]

    @property
    def ratio(self) -> float:
        return median(n / d for n, d in zip(self.numerator, self.denominator, strict=True))

    @property
    def num(self) -> float:
        return median(self.numerator)

    @property
    def den(self) -> float:
        return median(self.denominator)


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call.

    On a shared machine the wall time also counts the time other processes held the
    cores; the CPU time counts only this process's own work.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))
Variant = tuple[Callable[[], Any] | None, Callable[[], Any], Callable[[], Any] | None]


def interleaved(variants: Mapping[str, Variant], repeats: int) -> dict[str, list[float]]:
    """Round-robin wall timings: for each round, each variant's (setup, timed fn, teardown) in turn."""
    return interleaved_cpu(variants, repeats)[0]


def interleaved_cpu(
    variants: Mapping[str, Variant], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Like :func:`interleaved`, returning (wall times, CPU times) per variant."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (before, fn, after) in variants.items():
            if before is not None:
                before()
            w, c = timed_cpu(fn)
            if VERBOSE:
                status(f"  {name}: {w * 1000:.1f} ms wall, {c * 1000:.1f} ms CPU")
            wall[name].append(w)
            cpu[name].append(c)
            if after is not None:
                after()
    return wall, cpu


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def collect() -> None:
    gc.collect()
    from studio.engine.lora_ops import release_memory

    release_memory()


# --------------------------------------------------------------------------- output
def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def ms(seconds: float) -> str:
    return fmt(seconds * 1000.0)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([f"### {title}", "", line, rule, *body, ""])


def kv_line(values: Mapping[str, float]) -> str:
    parts = []
    for key, value in values.items():
        text = ("nan" if value != value else f"{value:.4g}") if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def emit(text: str) -> None:
    print(text, flush=True)


def status(text: str) -> None:
    """Progress on stderr, so stdout keeps only the tables and the key=value line."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)
