"""What every command shares: exit statuses, the parser that prints one ``error:`` line, LoRA arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.errors import ValidationError

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, no usage dump
        command = " ".join(self.prog.split()[1:])  # e.g. "hub search"
        self.exit(EXIT_USER_ERROR, f"error: {message} (see `python -m studio {command} --help`)\n")


def _meant_as_schedule(part: str) -> bool:
    """A ``:``-part that is no file name but a mistyped weight or schedule (``1>``, ``0.8@x``)."""
    part = part.strip()
    if not part or "/" in part or "\\" in part or part.lower().endswith(".safetensors"):
        return False
    return any(c in part for c in ">@,%") or part[0] in "0123456789.-+"


def parse_lora_schedules(text: str):
    """``FILE[:HIGH[:LOW]]`` → (path, high schedule, low schedule); LOW defaults to HIGH, HIGH to 1.

    HIGH and LOW are weights or schedules (``0.8``, ``1>0``, ``"1>0 cosine"``, ``0.8@0-50%``, ``1@1-2``,
    ``1,1,0.5,0``; see :mod:`studio.stack.schedule`), which never contain a colon.
    """
    from studio.stack import schedule as S

    parts = text.split(":")
    found: list = []
    while len(parts) > 1 and len(found) < 2:
        try:
            found.insert(0, S.parse(parts[-1]))
        except S.ScheduleError as exc:
            if _meant_as_schedule(parts[-1]):
                raise ValidationError(f"--lora {text!r}: {exc}.") from None
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise ValidationError(f"--lora {text!r} names no file; use FILE[:HIGH[:LOW]].")
    high = found[0] if found else S.Constant(value=1.0)
    low = found[1] if len(found) > 1 else high
    return Path(path).expanduser(), high, low


def parse_lora_arg(text: str):
    """``FILE[:HIGH[:LOW]]`` → (path, high, low) as numbers: a schedule's weight of largest magnitude
    (0 only when it is 0 throughout); see :func:`parse_lora_schedules` for the schedules themselves."""
    from studio.stack import schedule as S

    path, high, low = parse_lora_schedules(text)
    return path, S.peak(high), S.peak(low)
