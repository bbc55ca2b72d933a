"""Watching a run: the validation loss per expert and sample renders of checkpoints.

The validation loss is the flow-matching loss on the validation clips at ``val_timesteps``
fixed timesteps spread over each expert's range, with fixed noise per clip, so it moves
only when the LoRA does: the base model's value (LoRA off) is measured once, the trained
one at every ``val_every`` steps and at the end. A validation loss that rises while the
training loss falls means the LoRA is overfitting.

A sample is an ordinary studio render through the manager: the checkpoint's pair as a stack
entry, from the chosen start image and prompt, saved with its sidecar among the renders
(so the History and Compare tabs show it, and its record names the checkpoint file).
"""

from __future__ import annotations

import torch

from studio.training.encode import Encoded, Example
from studio.training.objective import fixed_timesteps, flow_loss


def _noise_for(example_index: int, shape: torch.Size, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + example_index)
    return torch.randn(shape, generator=generator)


@torch.no_grad()
def validation_loss(
    model,
    examples: list[Example],
    text: dict[str, torch.Tensor],
    *,
    expert: str,
    boundary: float | None,
    shift: float,
    timesteps: int,
    seed: int,
    device,
) -> float:
    """Mean flow-matching loss of ``model`` over ``examples`` × fixed timesteps of the expert's range."""
    ts = fixed_timesteps(timesteps, expert, boundary, shift)
    total, count = 0.0, 0
    for index, example in enumerate(examples):
        x0 = example.latents.unsqueeze(0).to(device)
        condition = example.condition.unsqueeze(0).to(device)
        embeds = text[example.caption].unsqueeze(0).to(device)
        noise = _noise_for(index, example.latents.shape, seed).unsqueeze(0).to(device)
        for t in ts:
            loss = flow_loss(model, x0, condition, embeds, noise, t.view(1).to(device))
            total += float(loss)
            count += 1
    return total / max(1, count)


def validation_examples(val: Encoded, train: Encoded) -> tuple[list[Example], dict[str, torch.Tensor]]:
    """The held-out clips (plain cut), or the training clips' plain cuts when none were set aside."""
    source = val if val.examples else train
    return [e for e in source.examples if e.variant == "plain"], source.text


def sample_render(manager, *, image, settings, files: dict[str, str], label: str, outputs_dir):
    """Render ``settings`` with the checkpoint's LoRA files (expert → path) and save it; returns SavedRender."""
    from studio.engine.manager import RenderRequest
    from studio.outputs.render_files import save_render
    from studio.stack.schema import LoraSource, Stack, StackEntry

    entry = StackEntry(
        name=label,
        high=LoraSource.local(files["high"]) if "high" in files else None,
        low=LoraSource.local(files["low"]) if "low" in files else None,
        weight_high=1.0 if "high" in files else 0.0,
        weight_low=1.0 if "low" in files else 0.0,
    )
    request = RenderRequest(image=image, settings=settings, stack=Stack(entries=[entry]))
    result = manager.render(request)
    return save_render(request, result, outputs_dir=outputs_dir)
