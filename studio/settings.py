"""Where the studio keeps things, and which model it runs: from flags, env vars and defaults.

Environment variables (a Space sets these in its settings):

- ``STUDIO_MODEL``: a registry name (``demo``, ``wan2.2-i2v-a14b``, ``wan2.2-ti2v-5b``) or a
  local folder holding a diffusers Wan pipeline. Unset: the real A14B when CUDA is present
  and its weights are on disk, else ``demo``.
- ``STUDIO_LORA_DIRS``: extra LoRA folders, separated by ``os.pathsep`` (``:`` on Linux).
- ``STUDIO_OUTPUTS``: where renders are written (default ``./outputs``).
- ``STUDIO_CACHE``: where the demo model and other caches live (default ``./.studio-cache``).
- ``STUDIO_PRESETS``: the user's presets folder (default ``./user_presets``).
- ``STUDIO_DTYPE``: the precision the model is loaded in: ``float32``, ``bfloat16`` or
  ``float16`` (also ``fp32``/``bf16``/``fp16``). Unset: bfloat16 on a GPU, float32 on the CPU.
- ``STUDIO_DEMO_LORAS``: ``0`` leaves out the demo LoRAs the studio builds for the demo model
  (in ``<cache>/demo-loras``, listed in the library only while the demo model is loaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from studio.errors import ValidationError

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(value: str | None) -> str | None:
    """A dtype name as the studio spells it (``float32``/``bfloat16``/``float16``), or None for the default."""
    if value is None or not str(value).strip():
        return None
    name = str(value).strip().lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValidationError(
            f"Unknown dtype {value!r}: choose float32, bfloat16 or float16 (or fp32, bf16, fp16)."
        )
    return name


DEMO_LORA_DIRNAME = "demo-loras"  # inside cache_dir: the demo LoRAs (studio.loras.demo_loras)


def _split_dirs(value: str | None) -> list[Path]:
    if not value:
        return []
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


@dataclass(frozen=True)
class Settings:
    lora_dirs: tuple[Path, ...] = (Path("loras"),)
    outputs_dir: Path = Path("outputs")
    cache_dir: Path = Path(".studio-cache")
    presets_dir: Path = Path("user_presets")  # the user's own presets (shipped ones live in ./presets)
    model: str | None = None  # None: pick the default (see studio.models.registry.default_model_name)
    dtype: str | None = None  # None: the model's dtype on a GPU (bfloat16), float32 on the CPU
    extra: dict[str, str] = field(default_factory=dict)
    # Build demo LoRAs for the demo model and list them while it is loaded. from_env turns it on
    # (the app and the CLI); code that builds Settings itself opts in.
    demo_loras: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        lora_dirs = [Path("loras"), *_split_dirs(env.get("STUDIO_LORA_DIRS"))]
        settings = cls(
            lora_dirs=tuple(dict.fromkeys(lora_dirs)),
            outputs_dir=Path(env.get("STUDIO_OUTPUTS") or "outputs"),
            cache_dir=Path(env.get("STUDIO_CACHE") or ".studio-cache"),
            presets_dir=Path(env.get("STUDIO_PRESETS") or "user_presets"),
            model=env.get("STUDIO_MODEL") or None,
            dtype=env.get("STUDIO_DTYPE") or None,
            demo_loras=env.get("STUDIO_DEMO_LORAS", "1").strip().lower() not in ("0", "false", "no", "off"),
        )
        return settings.with_(**{k: v for k, v in overrides.items() if v is not None})

    def with_(self, **changes) -> Settings:
        if "lora_dirs" in changes:
            changes["lora_dirs"] = tuple(dict.fromkeys(Path(p) for p in changes["lora_dirs"]))
        for key in ("outputs_dir", "cache_dir", "presets_dir"):
            if key in changes:
                changes[key] = Path(changes[key])
        return replace(self, **changes)

    @property
    def demo_lora_dir(self) -> Path:
        """The demo LoRAs' own folder (never one of the user's LoRA folders)."""
        return self.cache_dir / DEMO_LORA_DIRNAME

    def resolved_lora_dirs(self) -> list[Path]:
        """The LoRA folders files may be loaded from: the user's, then the demo folder when enabled.

        Stack paths into the demo folder resolve whatever the model (a stack or preset made with
        the demo model stays valid); the library lists the folder only while the demo model runs.
        """
        dirs = [p.expanduser().resolve() for p in self.lora_dirs]
        if self.demo_loras:
            demo = self.demo_lora_dir.expanduser().resolve()
            if demo not in dirs:
                dirs.append(demo)
        return dirs
