"""NVML readings: the real call on this machine, and the parsing of what NVML returns.

NVML's answers are built with pynvml's own ctypes structures (``c_nvmlMemory_t``,
``c_nvmlProcessInfo_v2_t`` through ``nvmlStructToFriendlyObject``, exactly what
``nvmlDeviceGetComputeRunningProcesses`` returns), and the reading path runs against
a small stand-in binding passed to :func:`gpu_status` (no patching of pynvml).
"""

from __future__ import annotations

import os
import time

import pynvml
import pytest

from studio.vram import nvml
from studio.vram.nvml import NO_GPU, GpuReading, gpu_status, parse_device, read_gpus

GiB = 1 << 30


def memory(total: int, used: int) -> pynvml.c_nvmlMemory_t:
    return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)


def process(pid: int, used: int | None):
    info = pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_v2_t(pid=pid, usedGpuMemory=used or 0))
    if used is None:  # what pynvml puts there when the driver does not say (Windows WDDM)
        info.usedGpuMemory = None
    return info


# ---------------------------------------------------------------------------
# The real call on this machine
# ---------------------------------------------------------------------------


def test_real_nvml_on_this_machine():
    status = gpu_status()
    assert isinstance(status.gpus, list)
    if status.gpus:  # a machine with a driver: real readings
        gpu = status.gpus[0]
        assert gpu.total_bytes > 0 and 0 <= gpu.used_bytes <= gpu.total_bytes
        assert status.message == ""
    else:  # no driver: an answer, not an exception
        assert status.message.startswith(NO_GPU)
        assert "NVML" in status.message or "nvidia-ml-py" in status.message
        assert read_gpus() == []
        assert not status.available


def test_a_failed_init_is_remembered_and_polling_is_cheap():
    gpu_status()
    start = time.perf_counter()
    for _ in range(200):
        gpu_status()
    assert (time.perf_counter() - start) / 200 < 0.005


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_parse_device_reads_names_memory_and_this_process():
    me = os.getpid()
    reading = parse_device(
        0,
        b"NVIDIA H100 80GB HBM3",
        memory(85_520_809_984, 30 * GiB),
        [process(me + 1, 2 * GiB), process(me, 27 * GiB)],
        pid=me,
    )
    assert reading == GpuReading(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        total_bytes=85_520_809_984,
        used_bytes=30 * GiB,
        free_bytes=85_520_809_984 - 30 * GiB,
        process_bytes=27 * GiB,
    )
    assert 0.3 < reading.used_fraction < 0.4
    assert "27.0 GiB by the studio" in reading.label()


def test_parse_device_when_this_process_is_unknown():
    me = 4242
    mem = memory(24 * GiB, GiB)
    # nothing runs: this process holds nothing
    assert parse_device(1, "RTX 4090", mem, [], pid=me).process_bytes == 0
    # others run but this PID is not listed (another PID namespace): unknown
    assert parse_device(1, "RTX 4090", mem, [process(7, GiB)], pid=me).process_bytes is None
    # the process list could not be read (NotSupported, NoPermission)
    assert parse_device(1, "RTX 4090", mem, None, pid=me).process_bytes is None
    # the driver does not report per-process memory (Windows WDDM)
    assert parse_device(1, "RTX 4090", mem, [process(me, None)], pid=me).process_bytes is None
    # str names are kept as they are
    assert parse_device(1, "RTX 4090", mem, [], pid=me).name == "RTX 4090"
    assert "by the studio" not in parse_device(1, "RTX 4090", mem, None, pid=me).label()


# ---------------------------------------------------------------------------
# The reading path, against a stand-in binding
# ---------------------------------------------------------------------------


class FakeNvml:
    """The few NVML calls the studio makes, answering with pynvml's own structures."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices, *, fail_init: bool = False, procs_error: bool = False):
        self.devices = devices  # [(name, total, used, [(pid, used)])]
        self.fail_init = fail_init
        self.procs_error = procs_error
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1
        if self.fail_init:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        _, total, used, _ = self.devices[handle]
        return memory(total, used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if self.procs_error:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return [process(pid, used) for pid, used in self.devices[handle][3]]


@pytest.fixture(autouse=True)
def _fresh():
    nvml.reset()
    yield
    nvml.reset()


def test_reading_path_with_two_gpus_initialises_once():
    fake = FakeNvml(
        [
            ("NVIDIA A100-SXM4-80GB", 80 * GiB, 10 * GiB, [(os.getpid(), 9 * GiB)]),
            ("NVIDIA L4", 24 * GiB, 0, []),
        ]
    )
    for _ in range(5):
        status = gpu_status(fake)
    assert fake.inits == 1
    assert status.available and status.message == ""
    a100, l4 = status.gpus
    assert (a100.index, a100.name, a100.process_bytes) == (0, "NVIDIA A100-SXM4-80GB", 9 * GiB)
    assert (l4.index, l4.free_bytes, l4.process_bytes) == (1, 24 * GiB, 0)
    assert read_gpus(fake) == status.gpus
    assert status.to_dict()["gpus"][0]["total_bytes"] == 80 * GiB


def test_reading_path_without_a_driver_or_devices():
    broken = FakeNvml([], fail_init=True)
    first = gpu_status(broken)
    second = gpu_status(broken)
    assert first.gpus == [] and first.message.startswith(NO_GPU)
    assert "Driver Not Loaded" in first.message
    assert second == first and broken.inits == 1  # the failure is remembered, not retried per poll
    empty = gpu_status(FakeNvml([]))
    assert empty.gpus == [] and empty.message == f"{NO_GPU} (NVML sees no device)"


def test_reading_path_when_processes_cannot_be_listed():
    fake = FakeNvml([("Tesla T4", 16 * GiB, GiB, [])], procs_error=True)
    (gpu,) = read_gpus(fake)
    assert gpu.process_bytes is None and gpu.used_bytes == GiB
