"""The Wan VAE's encode and decode peaks, walked from its config (causal chunks, caches, tiling)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studio.models.shapes import (
    ModelShapes,
)
from studio.vram.types import TILE_SAMPLE, TILE_STRIDE

# ---------------------------------------------------------------------------
# VAE encode / decode
# ---------------------------------------------------------------------------


@dataclass
class _VaeRun:
    peak: float = 0.0  # working set of the worst op (caller adds caches, inputs, outputs)
    where: str = ""
    cache: float = 0.0  # two-frame (or one-frame) caches of the causal convolutions

    def op(self, where: str, nbytes: float) -> None:
        if nbytes > self.peak:
            self.peak, self.where = nbytes, where


def _resnet(run: _VaeRun, where: str, cin: int, cout: int, t: int, n: int, c: int, held: float) -> None:
    """WanResidualBlock at t frames of n pixels (``held``: tensors the caller keeps alive)."""
    x_in = cin * t * n * c
    h = cout * t * n * c if cin != cout else 0.0
    base = held + x_in + h
    for cch, tag in ((cin, "norm1/conv1"), (cout, "norm2/conv2")):
        prev = cch * t * n * c if tag == "norm2/conv2" else 0.0  # conv1 output feeding norm2
        up = cch * t * n * 4 if c != 4 else 0.0
        run.op(f"{where} {tag}: RMS norm", base + prev + up + cch * t * n * 4)
        act = cch * t * n * c
        clone = cch * 2 * n * c
        cat = cch * (t + 2) * n * c
        out = cout * t * n * c
        run.op(f"{where} {tag}: causal conv", base + act + clone + max(2 * cat, cat + out))
        run.cache += clone
    run.op(f"{where}: residual add", base + 2 * cout * t * n * c)


def _upsample(
    run: _VaeRun, where: str, ch: int, cout: int, t: int, n: int, c: int, held: float, temporal: bool
) -> int:
    """WanResample upsample2d/3d: optional causal time conv doubling t, then nearest ×2 in fp32 + conv."""
    x_in = ch * t * n * c
    base = held + x_in
    if temporal:
        clone = ch * 2 * n * c
        cat = ch * (t + 2) * n * c
        run.op(f"{where}: time conv", base + clone + 2 * cat + 2 * ch * t * n * c)
        run.op(f"{where}: frame interleave", base + 2 * (2 * ch * t * n * c))
        run.cache += clone
        t *= 2
    # (b·t, c, h, w) is a view for one video; x.float(), nearest ×2 in fp32, cast back, conv
    f32 = ch * t * n * 4 if c != 4 else 0.0
    big32 = ch * t * 4 * n * 4
    run.op(f"{where}: nearest upsample (fp32)", base + f32 + big32)
    run.op(f"{where}: upsample cast", base + big32 + (ch * t * 4 * n * c if c != 4 else 0))
    run.op(f"{where}: upsample conv", base + ch * t * 4 * n * c + cout * t * 4 * n * c)
    return t


def _decoder_chunk(cfg: Mapping[str, Any], h: int, w: int, c: int) -> tuple[_VaeRun, int, int]:
    """The steady-state decode of one latent frame (→ 4 frames); returns run, frames, output pixels."""
    run = _VaeRun()
    base_dim = int(cfg.get("decoder_base_dim") or cfg.get("base_dim", 96))
    mult = list(cfg.get("dim_mult", [1, 2, 4, 4]))
    nres = int(cfg.get("num_res_blocks", 2))
    z = int(cfg.get("z_dim", 16))
    residual = bool(cfg.get("is_residual", False))
    out_ch = int(cfg.get("out_channels", 3))
    t_up = list(cfg.get("temperal_downsample", [False, True, True]))[::-1]
    dims = [base_dim * u for u in [mult[-1], *mult[::-1]]]
    t, n = 1, h * w
    run.cache += z * 2 * n * c  # conv_in
    run.op("decoder conv_in", z * (t + 2) * n * c * 2 + dims[0] * t * n * c)
    # the decoder's frame keeps each block's input alive while the block runs
    _resnet(run, "mid block", dims[0], dims[0], t, n, c, 0.0)
    run.op("mid block attention", dims[0] * t * n * c * 8 + dims[0] * t * n * 4)
    _resnet(run, "mid block", dims[0], dims[0], t, n, c, dims[0] * t * n * c)
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
        if i > 0 and not residual:
            cin //= 2
        up = i != len(mult) - 1
        temporal = bool(up and t_up[i])
        block_in = cin * t * n * c
        copy = block_in if residual else 0.0  # x_copy for the DupUp shortcut
        ch = cin
        for j in range(nres + 1):
            _resnet(run, f"up block {i} resnet {j}", ch, cout, t, n, c, copy + (block_in if j else 0.0))
            ch = cout
        if up:
            up_out = cout if residual else cout // 2
            t_new = _upsample(run, f"up block {i} upsample", cout, up_out, t, n, c, copy + block_in, temporal)
            if residual:  # DupUp3D: repeat_interleave + permuted copy, then the add
                big = up_out * t_new * 4 * n * c
                run.op(f"up block {i} shortcut", block_in + copy + 4 * big)
            t, n = t_new, n * 4
    last = dims[-1]
    run.op("decoder head", (last * t * n * c) * 3 + (last * t * n * 4 if c != 4 else 0) + last * t * n * 4)
    run.cache += last * 2 * n * c  # conv_out
    run.op("decoder conv_out", last * t * n * c * 2 + last * (t + 2) * n * c * 2 + out_ch * t * n * c)
    return run, t, n


def _encoder_chunk(
    cfg: Mapping[str, Any], height: int, width: int, c: int, frames: int
) -> tuple[_VaeRun, int]:
    """The steady-state encode of four video frames (one for a single image); returns run and
    latent channels·pixels out."""
    run = _VaeRun()
    base_dim = int(cfg.get("base_dim", 96))
    mult = list(cfg.get("dim_mult", [1, 2, 4, 4]))
    nres = int(cfg.get("num_res_blocks", 2))
    z = int(cfg.get("z_dim", 16))
    residual = bool(cfg.get("is_residual", False))
    in_ch = int(cfg.get("in_channels", 3))
    patch = int(cfg.get("patch_size") or 1)
    t_down = list(cfg.get("temperal_downsample", [False, True, True]))
    dims = [base_dim * u for u in [1, *mult]]
    t, n = (4 if frames > 1 else 1), (height // patch) * (width // patch)
    run.cache += in_ch * 2 * n * c
    run.op("encoder conv_in", in_ch * t * n * c + in_ch * (t + 2) * n * c * 2 + dims[0] * t * n * c)
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
        last = i == len(mult) - 1
        held = cin * t * n * c if residual else 0.0  # x_copy for the AvgDown shortcut
        ch = cin
        for j in range(nres):
            _resnet(run, f"down block {i} resnet {j}", ch, cout, t, n, c, held)
            ch = cout
        if not last:
            x_in = cout * t * n * c
            pad = cout * t * (n + 2 * int(math.sqrt(n)) + 1) * c  # ZeroPad2d((0, 1, 0, 1))
            run.op(f"down block {i} downsample", held + x_in + pad + cout * t * (n // 4) * c)
            n //= 4
            if t_down[i]:
                run.cache += cout * 1 * n * c
                run.op(
                    f"down block {i} time conv",
                    held + cout * t * n * c * 2 + cout * (t + 1) * n * c + cout * (t // 2) * n * c,
                )
                t = max(1, t // 2)
            if residual:
                run.op(f"down block {i} shortcut", held * 3 + cout * t * n * c)
    _resnet(run, "encoder mid block", dims[-1], dims[-1], t, n, c, 0.0)
    run.op("encoder mid attention", dims[-1] * t * n * c * 7 + dims[-1] * t * n * 4)
    run.cache += dims[-1] * 2 * n * c
    return run, 2 * z * n


@dataclass(frozen=True)
class _VaePeak:
    total: float
    where: str
    parts: dict[str, float]


def _tiles(latent_h: int, latent_w: int, spatial: int) -> tuple[int, int, int]:
    """(tiles, tile latent h, tile latent w) of AutoencoderKLWan.tiled_decode."""
    tile = TILE_SAMPLE // spatial
    stride = TILE_STRIDE // spatial
    rows = math.ceil(latent_h / stride)
    cols = math.ceil(latent_w / stride)
    return rows * cols, min(tile, latent_h), min(tile, latent_w)


def decode_peak(shapes: ModelShapes, width: int, height: int, frames: int, c: int, tiling: bool) -> _VaePeak:
    cfg = shapes.vae
    patch = int(cfg.get("patch_size") or 1)
    spatial = shapes.vae_spatial
    lat_t = shapes.latent_frames(frames)
    lat_h, lat_w = height // spatial, width // spatial
    z = shapes.latent_channels
    video = 3 * frames * height * width * c
    latents = z * lat_t * lat_h * lat_w * c * 3  # latents, de-normalised copy, post_quant_conv output
    tile_min = TILE_SAMPLE // spatial
    if tiling and (lat_w > tile_min or lat_h > tile_min):
        count, th, tw = _tiles(lat_h, lat_w, spatial)
        run, _, _ = _decoder_chunk(cfg, th, tw, c)
        tile_video = 3 * frames * (th * spatial) * (tw * spatial) * c
        decoded_tiles = count * tile_video
        working = run.cache + run.peak + decoded_tiles
        blending = decoded_tiles + 2 * video
        parts = {"vae_decode_working": max(working, blending), "latents_for_decode": latents}
        where = f"tiled decode: {run.where}" if working >= blending else "tiled decode: blending the tiles"
        return _VaePeak(sum(parts.values()), where, parts)
    run, t, n = _decoder_chunk(cfg, lat_h, lat_w, c)
    # the video decoded so far stays on the GPU, and so does the previous chunk's output
    chunk = run.cache + run.peak + video + int(cfg.get("out_channels", 3)) * t * n * c
    final = run.cache + 2 * video + (video if patch > 1 else 0)  # last cat (+ unpatchify), then clamp
    parts = {"vae_decode_working": max(chunk, final), "latents_for_decode": latents}
    where = run.where if chunk >= final else "assembling the decoded frames"
    return _VaePeak(sum(parts.values()), where, parts)


def encode_peak(shapes: ModelShapes, width: int, height: int, frames: int, c: int, tiling: bool) -> _VaePeak:
    """The I2V start-image encode: A14B encodes a whole F-frame video (image + zeros)."""
    cfg = shapes.vae
    enc_frames = 1 if shapes.expand_timesteps else frames
    video = 3 * enc_frames * height * width * c + 3 * height * width * 4  # condition video + image
    patch = int(cfg.get("patch_size") or 1)
    if patch > 1:
        video += 3 * enc_frames * height * width * c  # patchified copy
    tile_min = TILE_SAMPLE
    if tiling and (width > tile_min or height > tile_min):
        h, w = min(height, TILE_SAMPLE), min(width, TILE_SAMPLE)
        run, _ = _encoder_chunk(cfg, h, w, c, enc_frames)
        where = f"tiled encode: {run.where}"
        working = run.cache + run.peak  # the encoded tiles (latents) are small
    else:
        run, _ = _encoder_chunk(cfg, height, width, c, enc_frames)
        where = run.where
        working = run.cache + run.peak
    parts = {"vae_encode_working": working, "condition_video": video}
    return _VaePeak(sum(parts.values()), where, parts)
