"""One GPU check of the real Wan2.2 A14B shapes: ``bench/gpu_check.sh WHEELS_DIR`` (or ``python -m bench.gpu_check``).

Writes one JSON file (``$OUT/gpu_check.json`` when ``OUT`` is set, else
``bench/results/gpu_check-<UTC time>.json``) after every measurement, and prints a summary
and a ``key=value`` line at the end. Sections, in order (see :mod:`bench.gpu_sections`):

``env``       versions, GPU, compilers, the attention backend (diffusers' and the SDPA kernel
              that runs, with each SDPA backend's speed at the real shape), a bf16 matmul's speed
``forward``   one expert (40 layers, random bf16 weights) at 480×832×81 = 32,760 tokens:
              seconds per forward with no LoRA, 4 rank-64 LoRAs unfused (studio, peft) and
              fused, against the compute bound (1.678 PFLOP per forward at 989 TFLOP/s dense
              bf16 on an H100/H200), and its peak memory against the studio's estimate
``soak``      bf16 exactness of 50 fused weight changes (fuse, new weights, fuse...) at that scale
``compiled``  compiled mode on that expert: compile time, seconds per forward with the 4 LoRAs
              hot-swapped and with the room empty, whether a weight change / a swap / removing
              all recompiles (``error_on_recompile``)
``render``    a full 4-step 480p render of the two-expert pipeline with every component at its
              real shape (random weights; a small word-level tokenizer) in ``gpu`` and
              ``model-offload`` modes: time per phase and ``torch.cuda.max_memory_allocated``
              against the studio's estimate for each mode
``compiled_base``  last, when time is left (not with ``--quick``): a fresh expert compiled the
              same way without LoRA room, for the compiled-vs-eager speed-up

Every measurement runs in its own ``try``: a failure is recorded (``errors``) and the rest
still runs. Each section has a time budget and the whole run a deadline (default 450 s):
what does not fit is recorded as ``skipped``, and at the deadline the file is written and the
process exits (code 3). ``--quick``: one repeat, no peft or compiled-base variants, 10 soak
changes, one render per mode. ``--tiny --device cpu``: the demo model's shapes, for testing
this script without a GPU. Imports only the engine side of the studio (no gradio, pydantic,
imageio-ffmpeg).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.gpu_log import note_failure, status

SCHEMA = 1
DEFAULT_DEADLINE_S = 440.0
# Seconds per section (the run's deadline caps them all). The soak is long: an exact unfuse copies the
# touched weights back from host RAM (about 28 GB per A14B expert), once per weight change.
BUDGETS_S = {
    "env": 20.0,
    "forward": 80.0,
    "soak": 100.0,
    "compiled": 110.0,
    "render": 120.0,
    "compiled_base": 80.0,
}
TARGETS = {  # key: (comparison, value, what)
    "fused4_overhead": ("<=", 0.02, "fused 4-LoRA forward vs the base forward"),
    "hotswap4_overhead": ("<=", 0.02, "compiled + hot-swapped 4-LoRA forward vs the eager base forward"),
    "compile_speedup": (">=", 1.3, "eager base forward / compiled base forward"),
    "render_gpu_s": ("<=", 12.0, "4-step 480p render end to end, gpu mode (s)"),
    "vram_gpu_ratio": ("within", 0.10, "measured / estimated peak, gpu mode"),
    "vram_model_offload_ratio": ("within", 0.10, "measured / estimated peak, model-offload mode"),
    "soak_tensors_changed": ("<=", 0, "weights not restored exactly after 50 fused weight changes"),
    "recompiles": ("<=", 0, "LoRA changes that recompiled in compiled mode"),
}


class Section:
    """One section's measurements: each :meth:`run` is its own try block, within the section's time."""

    def __init__(self, record: Record, name: str, budget_s: float) -> None:
        self.record, self.name = record, name
        self.ends = min(record.deadline, time.monotonic() + budget_s)
        record.data["sections"].setdefault(name, {})
        record.data["budgets_s"][name] = budget_s

    def left(self) -> float:
        return self.ends - time.monotonic()

    def put(self, key: str, value: Any) -> None:
        self.record.put(self.name, key, value)

    def run(self, key: str, fn: Callable[[], Any], *, needs_s: float = 0.0, store: bool = True) -> Any:
        """``fn()``, its result stored under ``key``; None when it failed or there is no time left for it."""
        if self.left() < needs_s:
            self.record.note("skipped", f"{self.name}.{key}", f"time budget ({self.left():.0f} s left)")
            return None
        self.record.current = f"{self.name}.{key}"
        started = time.monotonic()
        try:
            value = fn()
        except Exception as exc:  # every measurement on its own: record and go on
            note_failure(self.record, f"{self.name}.{key}", exc)
            return None
        finally:
            self.record.current = None
        if store and value is not None:
            self.put(key, value)
        shown = _short(value) if store else type(value).__name__
        status(f"{self.name}.{key}: {shown} ({time.monotonic() - started:.1f} s)")
        return value


class Record:
    """The JSON file, written after every change (atomically), and the run's deadline."""

    def __init__(self, path: Path, deadline_s: float, argv: list[str]) -> None:
        self.path = path
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.current: str | None = None
        self.budget_scale = 1.0
        self._lock = threading.RLock()
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": argv,
            "deadline_s": deadline_s,
            "budgets_s": {},
            "sections": {},
            "errors": {},
            "skipped": {},
        }

    def section(self, name: str) -> Section:
        return Section(self, name, BUDGETS_S[name] * self.budget_scale)

    def put(self, section: str, key: str, value: Any) -> None:
        with self._lock:
            self.data["sections"].setdefault(section, {})[key] = value
            self.write()

    def note(self, kind: str, key: str, text: str) -> None:
        with self._lock:
            self.data[kind][key] = text
            self.write()

    def write(self) -> None:
        with self._lock:
            self.data["elapsed_s"] = round(time.monotonic() - self.t0, 2)
            self.data["summary"] = summary(self.data)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable, allow_nan=True))
            os.replace(tmp, self.path)

    def arm(self) -> threading.Timer:
        """At the deadline: write what there is, print the summary, exit with code 3."""

        def expire() -> None:
            with self._lock:
                self.data["timed_out_in"] = self.current or "between measurements"
                self.write()
                print_summary(self.data, self.path)
            os._exit(3)

        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), expire)
        timer.daemon = True
        timer.start()
        return timer


def _jsonable(value: Any) -> Any:
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1:
        return value.item()
    shape = getattr(value, "shape", None)
    return f"<{type(value).__name__} {list(shape)}>" if shape is not None else str(value)


def _short(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=_jsonable)
    except (TypeError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 160 else text[:157] + "..."


# ----------------------------------------------------------------------------- summary
def _get(data: dict, *path: str) -> Any:
    node: Any = data.get("sections", {})
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def summary(data: dict) -> dict[str, Any]:
    """The headline figures (None where not measured) and whether each target is met."""
    base = _get(data, "forward", "base", "s")
    out: dict[str, Any] = {
        "device": _get(data, "env", "device", "name"),
        "attention": _get(data, "env", "attention", "sdpa_default_kernels"),
        "base_s": base,
        "bound_s": _get(data, "forward", "subject", "bound_s"),
        "unfused4_s": _get(data, "forward", "unfused4", "s"),
        "fused4_s": _get(data, "forward", "fused4", "s"),
        "compiled_hotswap4_s": _get(data, "compiled", "hotswap4", "s"),
        "compiled_empty_room_s": _get(data, "compiled", "empty_room", "s"),
        "compiled_base_s": _get(data, "compiled_base", "base", "s"),
        "compile_s": _get(data, "compiled", "first_forward_s"),
        "render_gpu_s": _get(data, "render", "gpu", "total_s"),
        "render_model_offload_s": _get(data, "render", "model-offload", "total_s"),
    }
    out["base_vs_bound"] = _ratio(base, out["bound_s"])
    for key in ("unfused4", "fused4"):
        r = _ratio(out[f"{key}_s"], base)
        out[f"{key}_overhead"] = None if r is None else r - 1
    r = _ratio(out["compiled_hotswap4_s"], base)
    out["hotswap4_overhead"] = None if r is None else r - 1
    r = _ratio(out["compiled_hotswap4_s"], out["compiled_base_s"])
    out["hotswap4_vs_compiled_base"] = None if r is None else r - 1
    out["compile_speedup"] = _ratio(base, out["compiled_base_s"])
    for mode in ("gpu", "model-offload"):
        out[f"vram_{mode.replace('-', '_')}_ratio"] = _get(data, "render", mode, "measured_over_estimated")
    out["vram_forward_ratio"] = _get(data, "forward", "vram", "measured_over_estimated")
    out["soak_tensors_changed"] = _get(data, "soak", "after_last", "tensors_changed")
    checks = _get(data, "compiled", "recompiled")
    out["recompiles"] = sum(bool(v) for v in checks.values()) if isinstance(checks, dict) else None
    met = {}
    for key, (how, target, _) in TARGETS.items():
        value = out.get(key)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            met[key] = None
        elif how == "<=":
            met[key] = value <= target
        elif how == ">=":
            met[key] = value >= target
        else:
            met[key] = abs(value - 1) <= target
    out["targets_met"] = met
    out["errors"] = len(data.get("errors", {}))
    out["skipped"] = len(data.get("skipped", {}))
    return out


def print_summary(data: dict, path: Path) -> None:
    s = data.get("summary") or summary(data)
    lines = [f"GPU check ({s.get('device')}), {data.get('elapsed_s')} s; JSON: {path}"]
    for key, value in s.items():
        if key == "targets_met":
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else value
        lines.append(f"  {key:28} {shown}")
    lines.append("  targets:")
    for key, (how, target, what) in TARGETS.items():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[s["targets_met"].get(key)]
        lines.append(f"    {key:26} {how} {target:g}  {verdict:12}  ({what})")
    for kind in ("errors", "skipped"):
        for key, text in data.get(kind, {}).items():
            lines.append(
                f"  {kind[:-1] if kind == 'errors' else 'skipped'}: {key}: {text.strip().splitlines()[-1][:200]}"
            )
    if data.get("timed_out_in"):
        lines.append(f"  DEADLINE reached during {data['timed_out_in']}")
    print("\n".join(lines), flush=True)
    flat = {k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items()), flush=True
    )


# ----------------------------------------------------------------------------- main
def default_path() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(__file__).resolve().parent / "results" / f"gpu_check-{stamp}.json"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the demo model's shapes (tests this script)")
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer variants")
    parser.add_argument(
        "--out", type=Path, default=None, help="the JSON file (default: $OUT or bench/results)"
    )
    parser.add_argument(
        "--deadline", type=float, default=DEFAULT_DEADLINE_S, help="seconds for the whole run"
    )
    parser.add_argument("--layers", type=int, default=None, help="fewer expert layers (a smaller card)")
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every section's time budget"
    )
    parser.add_argument("--sections", default="env,forward,soak,compiled,render", help="comma-separated")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from bench import gpu_build, gpu_sections

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device here: run with --device cpu --tiny to test the script.", file=sys.stderr)
        return 2
    subject = (gpu_build.tiny() if args.tiny else gpu_build.REAL).with_layers(args.layers)
    path = args.out or default_path()
    record = Record(path, args.deadline, sys.argv[1:] if argv is None else list(argv))
    record.budget_scale = args.budget_scale
    record.data.update(device=device, tiny=args.tiny, quick=args.quick, subject=subject.name)
    record.write()
    timer = record.arm()
    status(f"writing {path}; deadline {args.deadline:.0f} s")
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        gpu_sections.run_all(record, subject, device, quick=args.quick, sections=wanted)
    finally:
        timer.cancel()
        record.write()
    print_summary(record.data, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
