"""What the NVIDIA GPUs hold right now, through NVML (the ``nvidia-ml-py`` package).

:func:`read_gpus` returns one :class:`GpuReading` per GPU (name, total/used/free
bytes, and this process's own usage when NVML can tell); :func:`gpu_status` adds a
sentence for the UI, ``"no NVIDIA GPU detected (...)"`` on machines without a driver
(NVML's init fails there: that is an answer, not an error). NVML is initialised once
per process (a failure is remembered too), so polling once a second costs a few
NVML calls.

The reading code is kept thin: NVML's answers are turned into readings by
:func:`parse_device`, a pure function the tests drive with NVML's own structures.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

NO_GPU = "no NVIDIA GPU detected"


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    # bytes this process holds on the GPU; None when NVML cannot tell (no permission,
    # Windows WDDM, or a container whose PIDs NVML does not see)
    process_bytes: int | None = None

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0

    def label(self) -> str:
        gib = 1 << 30
        text = f"{self.name}: {self.used_bytes / gib:.1f} / {self.total_bytes / gib:.1f} GiB used"
        if self.process_bytes is not None:
            text += f" ({self.process_bytes / gib:.1f} GiB by the studio)"
        return text


@dataclass(frozen=True)
class GpuStatus:
    gpus: list[GpuReading] = field(default_factory=list)
    message: str = ""  # "" when GPUs were read; otherwise why not, as a sentence

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [asdict(g) for g in self.gpus], "message": self.message}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def parse_device(
    index: int, name: Any, memory: Any, processes: Iterable[Any] | None, pid: int | None = None
) -> GpuReading:
    """One GPU's reading from what NVML returned for it.

    ``memory`` has ``total``/``free``/``used`` (``nvmlDeviceGetMemoryInfo``);
    ``processes`` is ``nvmlDeviceGetComputeRunningProcesses``'s list (objects with
    ``pid`` and ``usedGpuMemory``, which is ``None`` where the driver does not say), or
    ``None`` when that call failed. ``pid`` defaults to this process.
    """
    pid = os.getpid() if pid is None else pid
    total = int(memory.total)
    used = int(memory.used)
    free = int(memory.free)
    process_bytes: int | None = None
    if processes is not None:
        procs = list(processes)
        mine = [p for p in procs if int(getattr(p, "pid", -1)) == pid]
        if mine:
            amounts = [getattr(p, "usedGpuMemory", None) for p in mine]
            process_bytes = None if any(a is None for a in amounts) else sum(int(a) for a in amounts)
        elif not procs:
            process_bytes = 0  # nothing runs on this GPU, so neither do we
        # else: other processes are listed but not this one: not using it, or its PID is
        # in another namespace (containers): unknown
    return GpuReading(
        index=index,
        name=_text(name),
        total_bytes=total,
        used_bytes=used,
        free_bytes=free,
        process_bytes=process_bytes,
    )


class _Nvml:
    """NVML, initialised at most once per process (a failed init is remembered too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[int, Any] = {}  # id(binding) -> binding, initialised
        self._failed: dict[int, tuple[Any, str]] = {}  # id(binding) -> (binding, why)
        self._import_error: str | None = None

    def _binding(self, nvml: Any) -> tuple[Any, str | None]:
        if nvml is not None:
            return nvml, None
        if self._import_error is None:
            try:
                import pynvml  # nvidia-ml-py

                return pynvml, None
            except ImportError:
                self._import_error = f"{NO_GPU} (the nvidia-ml-py package is not installed)"
        return None, self._import_error

    def _ensure(self, nvml: Any) -> str | None:
        key = id(nvml)
        if key in self._ready:
            return None
        if key in self._failed:
            return self._failed[key][1]
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml.NVMLError (LibraryNotFound, DriverNotLoaded...), OSError
            why = f"{NO_GPU} (NVML: {exc})"
            self._failed[key] = (nvml, why)
            return why
        self._ready[key] = nvml
        return None

    def status(self, nvml: Any = None) -> GpuStatus:
        with self._lock:
            nvml, error = self._binding(nvml)
            error = error or self._ensure(nvml)
            if error:
                return GpuStatus([], error)
            try:
                gpus = [_read_device(nvml, i) for i in range(int(nvml.nvmlDeviceGetCount()))]
            except Exception as exc:
                return GpuStatus([], f"the GPUs could not be read (NVML: {exc})")
        if not gpus:
            return GpuStatus([], f"{NO_GPU} (NVML sees no device)")
        return GpuStatus(gpus, "")

    def reset(self) -> None:
        """Forget every init (tests; or after a driver was installed)."""
        with self._lock:
            for nvml in self._ready.values():
                with contextlib.suppress(Exception):
                    nvml.nvmlShutdown()
            self._ready.clear()
            self._failed.clear()
            self._import_error = None


def _read_device(nvml: Any, index: int) -> GpuReading:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # NotSupported / NoPermission: this process's usage stays unknown
        processes = None
    return parse_device(index, name, memory, processes)


_NVML = _Nvml()


def gpu_status(nvml: Any = None) -> GpuStatus:
    """The GPUs and their memory now, or a sentence saying why there are none.

    ``nvml`` is the NVML binding to use (default: ``pynvml`` from nvidia-ml-py).
    """
    return _NVML.status(nvml)


def read_gpus(nvml: Any = None) -> list[GpuReading]:
    """One reading per NVIDIA GPU; an empty list when there is none (see :func:`gpu_status`)."""
    return gpu_status(nvml).gpus


def reset() -> None:
    _NVML.reset()


GIB = 1024**3


def card_bytes(choice: str | None) -> tuple[int | None, str]:
    """The card to plan for (bytes) and a line describing it (detected via NVML or chosen)."""
    status = gpu_status()
    if choice and choice != "detected":
        return int(float(choice) * GIB), f"planning for a {choice} GB card"
    if status.gpus:
        gpu = status.gpus[0]
        return gpu.total_bytes, f"{gpu.name}, {gpu.total_bytes / GIB:.0f} GB"
    return None, "no NVIDIA GPU detected: choose a card size to plan for"
