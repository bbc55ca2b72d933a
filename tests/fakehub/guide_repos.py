"""The Hub repos the guide names, built in code in the demo model's shapes, for the fake Hub.

* ``lightx2v/Wan2.2-Distill-Loras``: the 4-step distill LoRAs, I2V and T2V, each a high/low pair. The I2V files
  carry the Wan2.1 leftovers the real ones have (``k_img``/``v_img``, ``norm_k_img``, ``img_emb``, ``diff_m``).
* ``alibaba-pai/Wan2.2-Fun-Reward-LoRAs``: VideoX-Fun reward LoRAs (``lora_unet__…``, rank 128, alpha 64, no
  ``ffn``), HPS2.1 and MPS, each a high/low pair.

Every file has its own random values (its own seed), so a test can tell which file landed on which expert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safetensors.torch import save

from studio.loras.synthetic import make_lora_tensors
from studio.models.demo import TRANSFORMER_CONFIG

LIGHTX2V = "lightx2v/Wan2.2-Distill-Loras"
REWARD = "alibaba-pai/Wan2.2-Fun-Reward-LoRAs"

LIGHTX2V_FILES = {
    ("i2v", "high"): "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
    ("i2v", "low"): "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors",
    ("t2v", "high"): "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",
    ("t2v", "low"): "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors",
}
REWARD_FILES = {
    ("hps", "high"): "Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors",
    ("hps", "low"): "Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors",
    ("mps", "high"): "Wan2.2-Fun-A14B-InP-high-noise-MPS.safetensors",
    ("mps", "low"): "Wan2.2-Fun-A14B-InP-low-noise-MPS.safetensors",
}
LIGHTX2V_README = """---
base_model: Wan-AI/Wan2.2-I2V-A14B
tags: [lora, image-to-video, text-to-video]
---
# Wan2.2 distill LoRAs (4 steps)
"""
REWARD_README = """---
base_model: Wan-AI/Wan2.2-I2V-A14B
tags: [lora]
---
# Wan2.2 Fun reward LoRAs (HPS2.1, MPS)
"""


def guide_files(config: Mapping[str, Any] = TRANSFORMER_CONFIG) -> dict[str, dict[str, bytes]]:
    """repo -> {file: bytes} for both repos, fitting ``config`` (the demo model's by default)."""
    lightx2v: dict[str, bytes] = {}
    for seed, ((task, _expert), name) in enumerate(LIGHTX2V_FILES.items(), start=100):
        layout = "lightx2v_i2v" if task == "i2v" else "lightx2v"
        tensors = make_lora_tensors(config, layout=layout, rank=4, alpha=4.0, seed=seed, scale=0.2)
        lightx2v[name] = save(tensors, metadata={"ss_output_name": name.removesuffix(".safetensors")})
    reward: dict[str, bytes] = {}
    for seed, name in enumerate(REWARD_FILES.values(), start=200):
        tensors = make_lora_tensors(config, layout="videox_fun", rank=128, seed=seed, scale=0.05)
        reward[name] = save(tensors)
    return {
        LIGHTX2V: {**lightx2v, "README.md": LIGHTX2V_README.encode()},
        REWARD: {**reward, "README.md": REWARD_README.encode()},
    }


def add_guide_repos(hub, config: Mapping[str, Any] = TRANSFORMER_CONFIG) -> dict[str, dict[str, bytes]]:
    """Serve both repos from ``hub`` (a :class:`~fakehub.FakeHub`); returns what :func:`guide_files` made."""
    files = guide_files(config)
    for repo, repo_files in files.items():
        hub.add_repo(repo, repo_files, downloads=1000)
    return files
