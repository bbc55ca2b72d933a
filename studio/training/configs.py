"""The same training run as configuration files for musubi-tuner or diffusion-pipe (for a rented GPU).

``write_configs`` makes a folder that can be copied to the training machine as it is:

- ``dataset/``: the usable clips and images (hard links, or copies across file systems) with
  the captions the studio would train on (``.txt`` next to each; trigger word added, left-out
  items left out), so both tools read the same data;
- musubi-tuner: ``dataset.toml`` (``[general]`` + ``[[datasets]]``: ``video_directory``,
  ``cache_directory``, ``target_frames``, ``frame_extraction``; ``image_directory`` for stills)
  and ``NAME.toml`` for ``wan_train_network.py --config_file`` (``task = "i2v-A14B"``, ``dit`` +
  ``dit_high_noise`` + ``timestep_boundary`` for both experts, or one ``dit`` with
  ``min_timestep``/``max_timestep`` for one expert, ``network_module = "networks.lora_wan"``, ...);
- diffusion-pipe: ``dataset.toml`` (``resolutions``, ``frame_buckets``, ``[[directory]]``) and one
  ``NAME_high_noise.toml`` / ``NAME_low_noise.toml`` per expert (diffusion-pipe trains one expert a
  run: ``[model] type = 'wan'``, ``ckpt_path``, ``transformer_path``, ``min_t``/``max_t``);
- ``README.txt``: the files to download and the command to run.

Model paths are placeholders under ``/models`` (edit them); everything else comes from the run's settings.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

from studio.errors import OutputError, ValidationError
from studio.training.dataset import DatasetReport
from studio.training.options import TrainOptions

TOOLS = ("musubi", "diffusion-pipe")
MODELS = "/models"
COMFY_FILES = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged (split_files/...)"


# --------------------------------------------------------------------------- a small TOML writer
def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML values must be finite")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _value(key)


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Scalars first, then ``[tables]``, then ``[[arrays of tables]]`` (lists of dicts at the top level)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {
        k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)
    }
    plain = {k: v for k, v in data.items() if k not in tables and k not in arrays and v is not None}
    lines += [f"{_key(k)} = {_value(v)}" for k, v in plain.items()]
    for name, table in tables.items():
        lines += ["", f"[{_key(name)}]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]
    for name, items in arrays.items():
        for item in items:
            lines += ["", f"[[{_key(name)}]]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the dataset copy
def _link_or_copy(src: Path, dst: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _prepare_dataset(report: DatasetReport, folder: Path) -> tuple[bool, bool]:
    """Usable media + their effective captions in ``folder``; (has videos, has images)."""
    folder.mkdir(parents=True, exist_ok=True)
    videos = images = False
    for item in report.usable:
        source = Path(item.path)
        _link_or_copy(source, folder / source.name)
        (folder / source.name).with_suffix(".txt").write_text(item.caption, encoding="utf-8")
        videos |= item.kind == "video"
        images |= item.kind == "image"
    return videos, images


# --------------------------------------------------------------------------- musubi-tuner
def _musubi(options: TrainOptions, out: Path, videos: bool, images: bool) -> dict[str, str]:
    o = options
    general = {
        "resolution": [o.width, o.height],
        "caption_extension": ".txt",
        "batch_size": o.batch,
        "enable_bucket": True,
        "bucket_no_upscale": False,
    }
    datasets = []
    if videos:
        datasets.append(
            {
                "video_directory": str(out / "dataset"),
                "cache_directory": str(out / "cache" / "video"),
                "target_frames": [o.frames],
                "frame_extraction": "head",
                "num_repeats": 1,
            }
        )
    if images:
        datasets.append(
            {
                "image_directory": str(out / "dataset"),
                "cache_directory": str(out / "cache" / "image"),
                "num_repeats": 1,
            }
        )
    boundary = o.boundary if o.boundary is not None else 0.9
    model = {
        "task": "i2v-A14B",
        "vae": f"{MODELS}/wan_2.1_vae.safetensors",
        "t5": f"{MODELS}/models_t5_umt5-xxl-enc-bf16.pth",
        "dataset_config": str(out / "dataset.toml"),
        "sdpa": True,
        "mixed_precision": "bf16",
    }
    high, low = (
        f"{MODELS}/wan2.2_i2v_high_noise_14B_fp16.safetensors",
        f"{MODELS}/wan2.2_i2v_low_noise_14B_fp16.safetensors",
    )
    if o.experts == "both":
        model.update({"dit": low, "dit_high_noise": high, "timestep_boundary": boundary})
    else:
        edge = round(boundary * 1000)
        lo, hi = (edge, 1000) if o.experts == "high" else (0, edge)
        model.update(
            {"dit": high if o.experts == "high" else low, "min_timestep": lo, "max_timestep": hi,
             "preserve_distribution_shape": True}
        )  # fmt: skip
    training = {
        "max_train_steps": o.steps * len(o.trained_experts),  # musubi counts steps over both experts
        "learning_rate": o.lr,
        "optimizer_type": "adamw",
        "optimizer_args": [f"weight_decay={o.weight_decay:g}"],
        "max_grad_norm": o.max_grad_norm,
        "gradient_accumulation_steps": o.grad_accum,
        "gradient_checkpointing": o.gradient_checkpointing,
        "timestep_sampling": "shift",
        "discrete_flow_shift": o.shift if o.shift is not None else 5.0,
        "seed": o.seed,
        "max_data_loader_n_workers": 2,
        "persistent_data_loader_workers": True,
    }
    network = {"network_module": "networks.lora_wan", "network_dim": o.rank, "network_alpha": o.lora_alpha}
    if o.target_modules != ["self_attn", "cross_attn", "ffn"]:
        excluded = [g for g in ("self_attn", "cross_attn", "ffn") if g not in o.target_modules]
        network["network_args"] = ["exclude_patterns=[" + ",".join(f"r'.*{g}.*'" for g in excluded) + "]"]
    saving = {"output_dir": str(out / "output"), "output_name": o.name}
    if o.save_every:
        saving["save_every_n_steps"] = o.save_every * len(o.trained_experts)
    config = {"model": model, "network": network, "training": training, "saving": saving}
    if o.sample_every:
        config["sampling"] = {
            "sample_prompts": str(out / "sample_prompts.txt"),
            "sample_every_n_steps": o.sample_every * len(o.trained_experts),
        }
    header = (
        "musubi-tuner training config, written by Wan LoRA Studio.\n"
        f"Run: accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 \\\n"
        f"       src/musubi_tuner/wan_train_network.py --config_file {out / (o.name + '.toml')}\n"
        "after caching: wan_cache_latents.py --dataset_config dataset.toml --vae ... --i2v, and\n"
        "wan_cache_text_encoder_outputs.py --dataset_config dataset.toml --t5 ...\n"
        f"Edit the {MODELS}/... paths (DiT files: {COMFY_FILES})."
    )
    return {
        "dataset.toml": to_toml({"general": general, "datasets": datasets}, "musubi-tuner dataset config"),
        f"{o.name}.toml": to_toml(config, header),
    }


# --------------------------------------------------------------------------- diffusion-pipe
def _diffusion_pipe(options: TrainOptions, out: Path, videos: bool, images: bool, val_folder: Path | None):
    o = options
    frame_buckets = sorted({1, o.frames} if images else {o.frames})
    dataset = {
        "resolutions": [[o.width, o.height]],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 7,
        "frame_buckets": frame_buckets,
        "directory": [{"path": str(out / "dataset"), "num_repeats": 1}],
    }
    files = {"dataset.toml": to_toml(dataset, "diffusion-pipe dataset config, written by Wan LoRA Studio")}
    if val_folder is not None:
        files["eval_dataset.toml"] = to_toml(
            {**dataset, "directory": [{"path": str(val_folder), "num_repeats": 1}]}
        )
    boundary = o.boundary if o.boundary is not None else 0.9
    for expert in o.trained_experts:
        stem = f"{o.name}_{expert}_noise"
        config: dict[str, Any] = {
            "output_dir": str(out / "output" / stem),
            "dataset": str(out / "dataset.toml"),
            "epochs": 1000,
            "max_steps": o.steps,
            "micro_batch_size_per_gpu": o.batch,
            "pipeline_stages": 1,
            "gradient_accumulation_steps": o.grad_accum,
            "gradient_clipping": o.max_grad_norm,
            "warmup_steps": 0,
            "activation_checkpointing": o.gradient_checkpointing,
            "save_dtype": "bfloat16",
            "caching_batch_size": 1,
            "video_clip_mode": "single_beginning",
        }
        if o.save_every:
            config["save_every_n_steps"] = o.save_every
        if val_folder is not None:
            config["eval_datasets"] = [{"name": "val", "config": str(out / "eval_dataset.toml")}]
            config["eval_before_first_step"] = True
            if o.val_every:
                config["eval_every_n_steps"] = o.val_every
        config["model"] = {
            "type": "wan",
            "ckpt_path": f"{MODELS}/Wan2.2-I2V-A14B",
            "transformer_path": f"{MODELS}/Wan2.2-I2V-A14B/{expert}_noise_model",
            "dtype": "bfloat16",
            "min_t": boundary if expert == "high" else 0.0,
            "max_t": 1.0 if expert == "high" else boundary,
        }
        config["adapter"] = {"type": "lora", "rank": o.rank, "dtype": "bfloat16"}
        config["optimizer"] = {
            "type": "adamw_optimi", "lr": o.lr, "betas": [0.9, 0.99], "weight_decay": o.weight_decay, "eps": 1e-8,
        }  # fmt: skip
        note = (
            ""
            if o.lora_alpha == o.rank
            else f"\nNote: diffusion-pipe uses alpha = rank; the studio run used {o.lora_alpha:g}."
        )
        header = (
            f"diffusion-pipe config for the {expert}-noise expert, written by Wan LoRA Studio.\n"
            f"Run: deepspeed --num_gpus=1 train.py --deepspeed --config {out / (stem + '.toml')}\n"
            f"Edit ckpt_path: the Wan-AI/Wan2.2-I2V-A14B checkpoint folder.{note}"
        )
        files[f"{stem}.toml"] = to_toml(config, header)
    return files


def write_configs(
    tool: str, options: TrainOptions, report: DatasetReport, out: Path, *, val_report=None
) -> list[Path]:
    """Write ``tool``'s files for this run into ``out``; returns the paths written."""
    if tool not in TOOLS:
        raise ValidationError(f"--export-config takes {' or '.join(TOOLS)}, not {tool!r}.")
    report.require_usable()
    out = Path(out).expanduser().resolve()
    try:
        videos, images = _prepare_dataset(report, out / "dataset")
        val_folder = None
        if val_report is not None and val_report.usable:
            val_folder = out / "val_dataset"
            _prepare_dataset(val_report, val_folder)
        if tool == "musubi":
            files = _musubi(options, out, videos, images)
            if options.sample_every:
                files["sample_prompts.txt"] = _sample_prompts(options, report, out)
        else:
            files = _diffusion_pipe(options, out, videos, images, val_folder)
        files["README.txt"] = _readme(tool, options, out, validation=val_folder is not None)
        written = []
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
            written.append(out / name)
    except OSError as exc:
        raise OutputError(f"The {tool} configuration could not be written to {out} ({exc}).") from None
    return written


def _sample_prompts(options: TrainOptions, report: DatasetReport, out: Path) -> str:
    """musubi's prompt file: one line with the size, frames, seed, steps and start image of the sample."""
    from studio.training.frames import Variant, load_frames

    first = report.usable[0]
    image = options.sample_image
    if not image:
        image = str(out / "sample_start.png")
        load_frames(first, Variant())[0].save(image)
    prompt = options.sample_prompt or first.caption
    return (
        f"{prompt} --w {first.cut.width} --h {first.cut.height} --f {first.cut.frames} "
        f"--d {options.seed} --s {options.sample_steps or 40} --i {image}\n"
    )


def _readme(tool: str, options: TrainOptions, out: Path, *, validation: bool) -> str:
    o = options
    if tool == "musubi":
        lines = [
            f"musubi-tuner run {o.name} ({', '.join(o.trained_experts)} expert(s)), written by Wan LoRA Studio.",
            f"Download into {MODELS}: wan2.2_i2v_high_noise_14B_fp16.safetensors and",
            "wan2.2_i2v_low_noise_14B_fp16.safetensors (Comfy-Org/Wan_2.2_ComfyUI_Repackaged, split_files/",
            "diffusion_models), wan_2.1_vae.safetensors (split_files/vae) and models_t5_umt5-xxl-enc-bf16.pth",
            "(Wan-AI/Wan2.1-I2V-14B-720P), or edit the paths in the .toml files.",
            "1. python src/musubi_tuner/wan_cache_latents.py --dataset_config dataset.toml --vae ... --i2v",
            "2. python src/musubi_tuner/wan_cache_text_encoder_outputs.py --dataset_config dataset.toml --t5 ...",
            "3. accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 \\",
            f"     src/musubi_tuner/wan_train_network.py --config_file {out / (o.name + '.toml')}",
        ]
        if validation:
            lines.append("musubi-tuner has no validation set: the validation clips were not copied.")
    else:
        lines = [
            f"diffusion-pipe run {o.name}, written by Wan LoRA Studio: one config per expert.",
            f"Download Wan-AI/Wan2.2-I2V-A14B into {MODELS}/Wan2.2-I2V-A14B, or edit ckpt_path/transformer_path.",
        ]
        lines += [
            f"deepspeed --num_gpus=1 train.py --deepspeed --config {out / (o.name + '_' + e + '_noise.toml')}"
            for e in o.trained_experts
        ]
    lines.append(
        "Put the resulting high-noise and low-noise LoRA files in a LoRA folder of the studio: it pairs them."
    )
    return "\n".join(lines) + "\n"
