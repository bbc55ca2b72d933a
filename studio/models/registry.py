"""The model registry: which Wan pipelines the studio knows, their defaults, where weights live.

Real models load with the real diffusers code from a Hub repo id (through the local
Hugging Face cache) or from a local folder. The ``demo`` model is built in code
(:mod:`studio.models.demo`) so the studio runs on any machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from studio.errors import ModelError
from studio.settings import Settings

GB = 1_000_000_000


@dataclass(frozen=True)
class ModelDefaults:
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    guidance_low: float | None
    shift: float
    fps: int
    negative_prompt: str = ""

    def settings_values(self) -> dict:
        """These defaults as RenderSettings fields (what a request that sets nothing else renders with)."""
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    label: str
    repo_id: str | None  # Hub repo (diffusers layout); None for the demo model and local folders
    experts: int  # 2 for Wan2.2 A14B (high-noise + low-noise), 1 otherwise
    boundary_ratio: float | None
    size_multiple: int  # width/height must be multiples of this
    defaults: ModelDefaults
    dtype: str  # "bfloat16" or "float32"
    approx_download_bytes: int
    folder: Path | None = None  # a local diffusers folder, for models given by path
    is_demo: bool = False
    note: str = ""


WAN_NEGATIVE = (
    "bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality, "
    "JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, poorly drawn face, "
    "still picture, cluttered background, walking backwards"
)

REGISTRY: dict[str, ModelSpec] = {
    "wan2.2-i2v-a14b": ModelSpec(
        name="wan2.2-i2v-a14b",
        label="Wan2.2 I2V A14B (high- and low-noise experts)",
        repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        experts=2,
        boundary_ratio=0.9,
        size_multiple=16,
        defaults=ModelDefaults(
            width=832,
            height=480,
            frames=81,
            steps=40,
            guidance=3.5,
            guidance_low=3.5,
            shift=5.0,
            fps=16,
            negative_prompt=WAN_NEGATIVE,
        ),
        dtype="bfloat16",
        # two 14.3 B experts + UMT5-XXL + VAE, bf16
        approx_download_bytes=int(2 * 28.6 * GB + 11.4 * GB + 0.5 * GB),
        note="Needs an NVIDIA GPU; 24 GB or more with offloading, 80 GB to keep everything resident.",
    ),
    "wan2.2-ti2v-5b": ModelSpec(
        name="wan2.2-ti2v-5b",
        label="Wan2.2 TI2V 5B (one expert, 720p)",
        repo_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        experts=1,
        boundary_ratio=None,
        size_multiple=32,
        defaults=ModelDefaults(
            width=1280,
            height=704,
            frames=121,
            steps=50,
            guidance=5.0,
            guidance_low=None,
            shift=5.0,
            fps=24,
            negative_prompt=WAN_NEGATIVE,
        ),
        dtype="bfloat16",
        approx_download_bytes=int(10.0 * GB + 11.4 * GB + 1.4 * GB),
        note="Needs an NVIDIA GPU with about 24 GB (with offloading).",
    ),
    "demo": ModelSpec(
        name="demo",
        label="Demo model (tiny, random weights, runs on CPU)",
        repo_id=None,
        experts=2,
        boundary_ratio=0.875,
        size_multiple=16,
        defaults=ModelDefaults(
            width=64, height=64, frames=17, steps=6, guidance=3.0, guidance_low=2.0, shift=5.0, fps=8
        ),
        dtype="float32",
        approx_download_bytes=0,
        is_demo=True,
        note=(
            "This is the demo model: a tiny Wan2.2-shaped pipeline with random weights, so it renders "
            "noise-like video. It exists so the studio works on any machine; choose a real model for real videos."
        ),
    ),
}

DEMO = REGISTRY["demo"]


def spec_from_folder(folder: Path) -> ModelSpec:
    """A spec for a local diffusers Wan pipeline folder (must hold ``model_index.json``)."""
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{folder} is not a diffusers pipeline folder (no readable model_index.json: {exc}). "
            "Point --model at the folder that holds model_index.json."
        ) from None
    if index.get("_class_name") not in {"WanImageToVideoPipeline", "WanPipeline"}:
        raise ModelError(
            f"{folder} holds a {index.get('_class_name')!r}, not a Wan image-to-video pipeline; "
            "the studio renders with WanImageToVideoPipeline."
        )
    two_experts = bool(index.get("transformer_2") and index["transformer_2"][0])
    base = REGISTRY["wan2.2-i2v-a14b"] if two_experts else REGISTRY["wan2.2-ti2v-5b"]
    is_demo = (folder / "studio_demo.json").exists()
    if is_demo:
        base = DEMO
    return replace(
        base,
        name=str(folder),
        label=f"{folder.name} (local folder)" if not is_demo else base.label,
        repo_id=None,
        boundary_ratio=index.get("boundary_ratio", base.boundary_ratio),
        experts=2 if two_experts else 1,
        folder=folder,
        approx_download_bytes=0,
    )


def resolve_model(name_or_folder: str) -> ModelSpec:
    """A registry name or a local folder → its spec; a clear error otherwise."""
    if name_or_folder in REGISTRY:
        return REGISTRY[name_or_folder]
    folder = Path(name_or_folder).expanduser()
    if folder.is_dir():
        return spec_from_folder(folder.resolve())
    choices = ", ".join(REGISTRY)
    raise ModelError(
        f"Unknown model {name_or_folder!r}: choose one of {choices}, or give a folder that holds a "
        "diffusers Wan pipeline (model_index.json)."
    )


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def local_weights(spec: ModelSpec) -> Path | None:
    """The folder of ``spec``'s weights if they are on disk (local folder or HF cache), else None."""
    if spec.folder is not None:
        return spec.folder
    if spec.repo_id is None:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(spec.repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return path if (path / "model_index.json").exists() else None


def default_model_name(settings: Settings) -> str:
    """The model to start with: the explicit choice, else real A14B when it can run, else demo."""
    if settings.model:
        return settings.model
    a14b = REGISTRY["wan2.2-i2v-a14b"]
    if cuda_available() and local_weights(a14b) is not None:
        return a14b.name
    return DEMO.name


def pipeline_source(spec: ModelSpec, settings: Settings) -> Path:
    """The local folder to hand to ``from_pretrained``; builds the demo model if needed."""
    if spec.is_demo and spec.folder is None:
        from studio.models.demo import ensure_demo_model

        return ensure_demo_model(settings.cache_dir)
    path = local_weights(spec)
    if path is None:
        raise ModelError(
            f"The weights of {spec.label} are not on this machine (about "
            f"{spec.approx_download_bytes / GB:.0f} GB). Download them from the model selector or with "
            f"`python -m studio download {spec.name}`, or give a local folder with --model."
        )
    return path
