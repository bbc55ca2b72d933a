"""Decoding latents to frames, exactly as the Wan pipeline's own decode does."""

from __future__ import annotations

from typing import Any

import numpy as np


def decode_latents(pipe: Any, latents) -> np.ndarray:
    """Latents → uint8 frames [F, H, W, 3] with ``pipe``'s VAE and video processor."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    with torch.no_grad():
        latents = latents.to(device=get_module_execution_device(vae), dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
        latents = latents * std.to(latents) + mean.to(latents)
        video = vae.decode(latents, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    pipe.maybe_free_model_hooks()
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
