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


def parse_lora_arg(text: str):
    """``FILE[:HIGH[:LOW]]`` → (path, high, low); LOW defaults to HIGH, HIGH to 1.0."""
    parts = text.split(":")
    weights: list[float] = []
    while len(parts) > 1 and len(weights) < 2:
        try:
            weights.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise ValidationError(f"--lora {text!r} names no file; use FILE[:HIGH[:LOW]].")
    high = weights[0] if weights else 1.0
    low = weights[1] if len(weights) > 1 else high
    return Path(path).expanduser(), high, low
