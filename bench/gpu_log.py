"""How the GPU check reports as it goes: status lines on stderr, and a failure noted in the record."""

from __future__ import annotations

import sys
import traceback
from typing import Any


def status(text: str) -> None:
    print(f"[gpu_check] {text}", file=sys.stderr, flush=True)


def error_text(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(lines)[-3000:]


def note_failure(record: Any, key: str, exc: BaseException) -> None:
    """Keep the traceback under ``errors`` in the record and say it on stderr; the run goes on."""
    record.note("errors", key, error_text(exc))
    status(f"{key}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
