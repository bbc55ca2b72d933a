"""Wan LoRA Studio: Wan2.2 image-to-video with stacked LoRAs."""

__version__ = "0.1.0"
