"""Which wheels ``bench/gpu_check.sh`` installs on the GPU machine (standard library only: it runs first).

The GPU machine has torch, transformers, accelerate, safetensors, huggingface_hub, numpy and
pillow but not diffusers or ftfy (the Wan prompt cleaner calls it). The check needs these
versions, the ones the test suite passes with; everything else it imports is already there.
``python -m bench.gpu_deps`` prints the distributions to install (missing, or a version the
rule below refuses); ``--download-line`` prints the ``pip download`` command for bench/README.md.
"""

from __future__ import annotations

import importlib.metadata
import sys

# distribution, pinned version, rule: "exact" (the studio relies on its internals), "min" (at
# least this version), "missing" (only when absent)
PINS: tuple[tuple[str, str, str], ...] = (
    ("diffusers", "0.42.1", "exact"),
    ("peft", "0.21.2", "exact"),
    ("safetensors", "0.8.0", "min"),  # diffusers 0.42 needs >= 0.8
    ("ftfy", "6.3.1", "missing"),
    ("wcwidth", "0.9.4", "missing"),  # ftfy's one dependency
)
PLATFORM = "--python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = piece[: len(piece) - len(piece.lstrip("0123456789"))]  # leading digits: "0rc1" -> 0
        parts.append(int(digits or 0))
    return tuple(parts)


def needed() -> list[str]:
    """``name==version`` of every pinned distribution this Python lacks or has in a refused version."""
    out = []
    for name, version, rule in PINS:
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name}=={version}")
            continue
        if (rule == "exact" and have != version) or (
            rule == "min" and _version_tuple(have) < _version_tuple(version)
        ):
            out.append(f"{name}=={version}")
    return out


def download_line(dest: str = "WHEELS_DIR") -> str:
    pins = " ".join(f"{name}=={version}" for name, version, _ in PINS)
    return f"pip download --dest {dest} --no-deps {PLATFORM} {pins}"


if __name__ == "__main__":
    print(download_line() if "--download-line" in sys.argv else " ".join(needed()))
