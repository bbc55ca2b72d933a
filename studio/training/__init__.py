"""Training LoRA pairs in the studio: dataset check, in-process trainer, export, configs for other tools.

- :mod:`studio.training.dataset` — read and check a folder of clips/images with captions;
- :mod:`studio.training.trainer` — train both experts (or one) on the studio's loaded model;
- :mod:`studio.training.export` — the pair in the original/ComfyUI layout with metadata;
- :mod:`studio.training.configs` — the same run as musubi-tuner / diffusion-pipe TOML files.
"""
