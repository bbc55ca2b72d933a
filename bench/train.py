"""9. Training step: one optimizer step of the studio's trainer vs a plain peft training step.

The studio's step (:meth:`studio.training.trainer.Trainer.optimizer_step`) holds the manager's
model through ``exclusive()`` (waiting for renders, activating the training adapter), draws
the batch from the latent cache, samples the expert's timesteps and noise, and runs the Wan
flow-matching loss, backward, gradient clipping and AdamW. The reference is what a training
script written straight against peft does on a copy of the same expert: ``add_adapter`` with
the same LoraConfig, the same batch (latents, condition, text, a high-noise timestep), fresh noise each step,
forward, MSE, backward, clipping, AdamW. Both on the demo model (where Python
overhead weighs most) at 33 frames, 64×64, on one thread (these steps are too small to gain
from two, and two threads fighting for a shared CPU make both sides noisy); pairs are
interleaved in alternating order, and the CPU-time ratio is reported next to the wall-time one.

Target: ``train_step_ratio`` ≤ 1.15. Run alone: ``python -m bench.train``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import common
from bench.context import Context, standalone

TITLE = "9. Training step (demo model, 33 frames 64×64, rank 16, both experts)"
TARGET = 1.15
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", "30"))


def _dataset(folder: Path) -> Path:
    from studio.media.video import write_video

    x = np.linspace(0, 1, 64)[None, :]
    frames = np.stack([np.stack([0.5 + 0.5 * np.sin(6 * x + 0.3 * f + c).repeat(64, 0) for c in range(3)], -1)
                       for f in range(33)])  # fmt: skip
    write_video((frames * 255).astype(np.uint8), folder / "wave.mp4", fps=16, metadata={})
    (folder / "wave.txt").write_text("a red wave moving", encoding="utf-8")
    return folder


def _plain_peft_step(transformer, options, example, text, t):
    """The reference: a peft LoRA on a copy of the expert and an AdamW step on one fixed batch."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=options.rank, lora_alpha=options.lora_alpha, target_modules=options.target_regex())
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    x0 = example.latents.unsqueeze(0)
    condition = example.condition.unsqueeze(0)
    embeds = text.unsqueeze(0)
    sigma = (t / 1000).view(-1, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)

    def step():  # what a training loop does each step: fresh noise, the noisy input, the loss, AdamW
        noise = torch.randn(x0.shape, generator=generator)
        model_input = torch.cat([(1 - sigma) * x0 + sigma * noise, condition], dim=1)
        prediction = transformer(
            hidden_states=model_input, timestep=t, encoder_hidden_states=embeds, return_dict=False
        )[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), noise - x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _alternating(variants: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved pairs whose order alternates (A B, B A, ...): neither side always runs first."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            w, c = common.timed_cpu(variants[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from diffusers import WanTransformer3DModel

    from studio.engine.manager import PipelineManager
    from studio.models.demo import ensure_demo_model
    from studio.training.options import TrainOptions
    from studio.training.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="wan-bench-train-"))
    settings = ctx.settings().with_(lora_dirs=[tmp / "loras"], model="demo")
    try:
        common.status("encoding the training clip and attaching the training adapters (demo model)")
        manager = PipelineManager(settings, device=ctx.device)
        options = TrainOptions(
            name="bench", rank=16, lr=1e-3, frames=33, width=64, height=64, gradient_checkpointing=False
        )
        trainer = Trainer(manager, options, dataset=_dataset(tmp))
        encoded, buckets = trainer.prepare_steps()
        high = trainer.experts[0]
        folder = ensure_demo_model(settings.cache_dir)
        reference_model = WanTransformer3DModel.from_pretrained(folder / "transformer").to(
            manager.pipe.transformer.dtype
        )
        example = encoded.examples[0]
        t = torch.tensor([950.0])
        plain = _plain_peft_step(reference_model, trainer.options, example, encoded.text[example.caption], t)
        studio_step = lambda: trainer.optimizer_step(high, encoded, buckets)  # noqa: E731
        for _ in range(3):  # warm-up (allocator, first-call paths)
            studio_step()
            plain()
        common.status(f"timing {ROUNDS} interleaved pairs of training steps")
        times, cpu = _alternating({"studio": studio_step, "peft": plain}, ROUNDS)
        trainer.close()
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    pair = common.Pair(times["studio"], times["peft"])
    cpu_pair = common.Pair(cpu["studio"], cpu["peft"])
    rows = [
        ["studio trainer step (manager, cache, timesteps, loss, AdamW)", common.ms(pair.num)],
        ["plain peft step (fixed batch, same model copy)", common.ms(pair.den)],
        ["ratio (median of pairs, wall time)", common.fmt(pair.ratio)],
        ["ratio (median of pairs, CPU time)", common.fmt(cpu_pair.ratio)],
    ]
    keys = {"train_step_ratio": pair.ratio, "train_step_ratio_cpu": cpu_pair.ratio, "train_step_s": pair.num}
    return common.table(TITLE, ["what", "time"], rows), keys


if __name__ == "__main__":
    standalone(run)
