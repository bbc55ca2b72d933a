"""The trained LoRA as files every Wan tool loads: a high-noise / low-noise pair.

Layout: the original/ComfyUI naming, ``diffusion_model.blocks.N.self_attn.q.lora_down.weight``
(``A``, ``rank × in``), ``….lora_up.weight`` (``B``, ``out × rank``) and ``….alpha`` (a scalar;
the applied delta is ``alpha / rank · B·A``), which ComfyUI, kijai's wrapper, diffusers'
``load_lora_weights`` and the studio read. The header metadata says what it is: base model,
expert, boundary, rank, alpha, steps, trigger word, dataset size and studio version (plus
the Kohya/musubi ``ss_*`` keys other tools show). Files are named ``NAME_high_noise`` /
``NAME_low_noise``, so the library pairs them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio import __version__
from studio.errors import OutputError
from studio.loras.keys import diffusers_to_original
from studio.training import adapter

PREFIX = "diffusion_model."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def file_name(name: str, expert: str) -> str:
    return f"{name}_{'high' if expert == 'high' else 'low'}_noise.safetensors"


def state_dict(model, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The training adapter of ``model`` in the original layout (``lora_down``/``lora_up`` + ``alpha``)."""
    rank, alpha = adapter.rank_alpha(model)
    out: dict[str, torch.Tensor] = {}
    for module, layer in adapter.lora_modules(model).items():
        original = diffusers_to_original(module)
        if original is None:
            raise ValueError(f"{module} has no original/ComfyUI name; train the block modules only")
        a = layer.lora_A[adapter.ADAPTER].weight.detach()
        b = layer.lora_B[adapter.ADAPTER].weight.detach()
        out[f"{PREFIX}{original}.lora_down.weight"] = a.to("cpu", dtype).contiguous()
        out[f"{PREFIX}{original}.lora_up.weight"] = b.to("cpu", dtype).contiguous()
        out[f"{PREFIX}{original}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    assert rank > 0
    return out


def metadata(
    *,
    name: str,
    expert: str,
    base_model: str,
    boundary: float | None,
    rank: int,
    alpha: float,
    steps: int,
    trigger: str,
    dataset_size: int,
    shift: float,
    lr: float,
    target_modules: list[str],
) -> dict[str, str]:
    if boundary is None:
        lo, hi = 0, 1000
    else:
        lo, hi = (round(boundary * 1000), 1000) if expert == "high" else (0, round(boundary * 1000))
    meta = {
        "studio.version": __version__,
        "studio.base_model": base_model,
        "studio.expert": expert,
        "studio.boundary": "" if boundary is None else f"{boundary:g}",
        "studio.rank": str(rank),
        "studio.alpha": f"{alpha:g}",
        "studio.steps": str(steps),
        "studio.trigger_word": trigger,
        "studio.dataset_size": str(dataset_size),
        "studio.target_modules": ",".join(target_modules),
        "modelspec.title": f"{name} ({'high' if expert == 'high' else 'low'}-noise expert)",
        "modelspec.architecture": "wan2.2-i2v-a14b/lora" if boundary is not None else "wan/lora",
        "modelspec.trigger_phrase": trigger,
        "ss_output_name": name,
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_steps": str(steps),
        "ss_learning_rate": f"{lr:g}",
        "ss_min_timestep": str(lo),
        "ss_max_timestep": str(hi),
        "ss_discrete_flow_shift": f"{shift:g}",
        "ss_num_train_images": str(dataset_size),
    }
    return {k: v for k, v in meta.items() if v != ""}


def lora_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=meta)


def read_metadata(path: Path) -> dict[str, str]:
    from studio.loras.safetensors_io import read_header

    return dict(read_header(path).metadata)


def publish(files: dict[str, bytes], folder: Path, *, overwrite: bool) -> list[Path]:
    """Write the pair into ``folder`` (atomically; refusing to replace files unless ``overwrite``)."""
    from studio.media.files import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    targets = {folder / name: data for name, data in files.items()}
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise OutputError(
            f"{', '.join(existing)} already exist(s) in {folder}; choose another --name, or pass --overwrite "
            "(tick Overwrite) to replace them. The trained LoRA is kept in the run's last checkpoint."
        )
    written = []
    for path, data in targets.items():
        with atomic_output(path, what="LoRA file", overwrite=overwrite) as tmp:
            tmp.write_bytes(data)
        written.append(path)
    return written
