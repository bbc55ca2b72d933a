"""What ``bench.gpu_check`` measures, built in code with random weights (nothing is downloaded).

``REAL`` is Wan2.2 I2V A14B at 480×832×81 (32,760 tokens): two 40-layer experts (dim 5120,
ffn 13824), the UMT5-XXL text encoder and the Wan2.1 VAE, all at their real shapes and in
bf16, and rank-64 LoRAs over every block's attention and FFN. The tokenizer is a small
word-level one (the real one is a download); it only decides which token ids the real-size
text encoder embeds. ``TINY`` is the same with the demo model's shapes (for a CPU run of the
script's own logic).

Imports only the engine side of the studio (no gradio, pydantic, imageio-ffmpeg): the GPU
machine may lack them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.subjects import on_device, random_transformer
from studio.models.shapes import A14B, ModelShapes

WORDS = "a cat walks slowly through the city at night in the rain camera pans left".split()
SPECIALS = ["<pad>", "</s>", "<unk>"]
PROMPT = "a cat walks slowly through the city at night in the rain, camera pans left"
BOUNDARY = 0.9  # A14B I2V
SHIFT = 5.0


@dataclass(frozen=True)
class Subject:
    name: str
    shapes: ModelShapes
    frames: int
    height: int
    width: int
    rank: int  # of each LoRA
    loras: int = 4
    dtype: torch.dtype = torch.bfloat16
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transformer(self) -> dict[str, Any]:
        return dict(self.shapes.transformer)

    @property
    def latent(self) -> tuple[int, int, int]:
        return ((self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    @property
    def tokens(self) -> int:
        return self.shapes.tokens(self.width, self.height, self.frames)

    def with_layers(self, layers: int | None) -> Subject:
        if not layers:
            return self
        return replace(
            self, shapes=replace(self.shapes, transformer={**self.shapes.transformer, "num_layers": layers})
        )


REAL = Subject("wan2.2-i2v-a14b", A14B, frames=81, height=480, width=832, rank=64)


def tiny() -> Subject:
    """The demo model's shapes in float32 (CPUs are slow at bf16): for running this script's logic on a CPU."""
    from studio.models.shapes import demo_shapes

    return Subject(
        "tiny (demo shapes)", demo_shapes(), frames=5, height=32, width=32, rank=4, dtype=torch.float32
    )


def expert(subject: Subject, *, seed: int, device: str, dtype=None):
    dtype = dtype or subject.dtype
    return random_transformer(subject.transformer, seed=seed, dtype=dtype, device=device)


def text_encoder(subject: Subject, *, device: str, dtype=None, seed: int = 10):
    dtype = dtype or subject.dtype
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**subject.shapes.text_encoder))
    return on_device(model, dtype=dtype, device=device, seed=seed).eval()


def vae(subject: Subject, *, device: str, dtype=None, seed: int = 20):
    dtype = dtype or subject.dtype
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan(**subject.shapes.vae)
    return on_device(model, dtype=dtype, device=device, seed=seed).eval()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def pipeline(subject: Subject, *, device: str, dtype=None):
    """The two-expert I2V pipeline with every component at ``subject``'s shapes, on ``device``."""
    dtype = dtype or subject.dtype
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer(),
        text_encoder=text_encoder(subject, device=device, dtype=dtype),
        vae=vae(subject, device=device, dtype=dtype),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT
        ),
        transformer=expert(subject, seed=1, device=device, dtype=dtype),
        transformer_2=expert(subject, seed=2, device=device, dtype=dtype),
        image_encoder=None,
        image_processor=None,
        boundary_ratio=BOUNDARY,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def start_image(subject: Subject):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(
        0, 255, size=(subject.height, subject.width, 3), dtype=np.uint8
    )
    return Image.fromarray(pixels, "RGB")


def render(pipe, subject: Subject, *, steps: int = 4, seed: int = 0, on_step=None):
    """One end-to-end render as the studio runs it (no CFG, 2 + 2 steps over the experts, decoded)."""
    return pipe(
        image=start_image(subject),
        prompt=PROMPT,
        height=subject.height,
        width=subject.width,
        num_frames=subject.frames,
        num_inference_steps=steps,
        guidance_scale=1.0,
        guidance_scale_2=1.0,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="np",
        callback_on_step_end=on_step,
    ).frames


def lora_state_dict(subject: Subject, *, seed: int, dtype=None) -> dict[str, torch.Tensor]:
    """A PEFT-layout LoRA of ``subject.rank`` over every block's attention and FFN (small values)."""
    dtype = dtype or subject.dtype
    from studio.loras.synthetic import make_lora_tensors

    return make_lora_tensors(
        subject.transformer, rank=subject.rank, layout="peft", seed=seed, scale=0.01, dtype=dtype
    )


def forward_inputs(subject: Subject, *, device: str, dtype=None) -> dict[str, Any]:
    dtype = dtype or subject.dtype
    from bench.subjects import forward_inputs as inputs

    return inputs(
        subject.transformer,
        latent=subject.latent,
        text_tokens=subject.shapes.text_len,
        dtype=dtype,
        device=device,
    )
