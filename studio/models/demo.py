"""The offline demo model: a tiny random-weight Wan2.2 I2V pipeline.

It has the real Wan2.2 A14B structure (two experts switched at ``boundary_ratio``,
the Wan VAE, a UMT5 text encoder) at toy sizes, so every code path of the studio
runs on any machine without the Hub: it is built in code with a fixed seed, saved
in diffusers layout and loaded back with ``from_pretrained``. Its videos are
noise-like: the weights are random.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the built model changes, so cached copies are rebuilt.
DEMO_MODEL_VERSION = 1
DEMO_DIRNAME = f"demo-wan2.2-i2v-v{DEMO_MODEL_VERSION}"
DEMO_SEED = 1234
BOUNDARY_RATIO = 0.875

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)

VAE_CONFIG = dict(
    base_dim=3,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
)

# A small word list so prompts tokenize to something other than <unk>.
_WORDS = (
    "a an the of and in on with at by to from is are cat dog person woman man girl boy car city "
    "street forest sea ocean sky sun moon night day light dark walking running dancing flying "
    "smiling looking camera slow fast zoom pan close up wide shot cinematic anime realistic "
    "portrait landscape red green blue white black gold hair eyes face hand water fire snow rain "
    "wind tree flower mountain river beach room window door table chair music video style quality "
    "high low blurry noisy static bright warm cold soft sharp detailed motion turn head turns"
).split()


SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
TEXT_ENCODER_CONFIG = dict(
    vocab_size=len(SPECIAL_TOKENS) + len(set(_WORDS)),
    d_model=TRANSFORMER_CONFIG["text_dim"],  # must equal the transformer's text_dim
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
)


def _build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(_WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    return tokenizer, len(vocab)


def build_demo_pipeline():
    """Build the demo pipeline in memory (random weights, fixed seed, float32)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(DEMO_SEED)
    tokenizer, vocab_size = _build_tokenizer()
    assert vocab_size == TEXT_ENCODER_CONFIG["vocab_size"]
    text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG)).eval()
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    transformer_2 = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    vae = AutoencoderKLWan(**VAE_CONFIG)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        transformer_2=transformer_2,
        image_encoder=None,
        image_processor=None,
        boundary_ratio=BOUNDARY_RATIO,
    )


def _is_complete(folder: Path) -> bool:
    marker = folder / "studio_demo.json"
    try:
        return json.loads(marker.read_text())["version"] == DEMO_MODEL_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_demo_model(cache_dir: Path) -> Path:
    """Build and save the demo pipeline under ``cache_dir`` unless it is there; return its folder.

    The folder is written under a temporary name and renamed into place, so a crash
    half-way never leaves a broken model that later runs would try to load.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / DEMO_DIRNAME
    if _is_complete(folder):
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=cache_dir))
    try:
        pipe = build_demo_pipeline()
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "studio_demo.json").write_text(
            json.dumps({"version": DEMO_MODEL_VERSION, "seed": DEMO_SEED, "boundary_ratio": BOUNDARY_RATIO})
        )
        if folder.exists():  # an older or broken build
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            if not _is_complete(folder):  # another process may have won the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
