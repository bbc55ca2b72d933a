"""The start image: loading anything a user can hand us, fitting it to the video size.

:func:`load_start_image` turns a path, bytes, a numpy array (as Gradio gives) or a PIL
image into a plain 8-bit RGB PIL image, or refuses with a ``ValidationError`` sentence.
:func:`fit_image` center-crops to the target aspect ratio and resizes with LANCZOS.
:func:`image_sha256` is a stable fingerprint of the pixels, for settings and caches.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from studio.errors import ValidationError

__all__ = ["MAX_PIXELS", "MIN_SIDE", "fit_image", "image_sha256", "load_start_image"]

MIN_SIDE = 16
MAX_PIXELS = 40_000_000

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)


def _check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValidationError(
            f"The start image is only {width}×{height} pixels. "
            f"Use an image at least {MIN_SIDE} pixels on each side."
        )
    if width * height > MAX_PIXELS:
        raise ValidationError(
            f"The start image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels), "
            f"more than the {MAX_PIXELS // 1_000_000}-megapixel limit. Scale it down and try again."
        )


def _unreadable(detail: str = "") -> ValidationError:
    extra = f" ({detail})" if detail else ""
    return ValidationError(
        f"The start image could not be read{extra}. "
        "It may be damaged, cut off, or not an image; use a PNG, JPEG or WebP file."
    )


def _high_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float grayscale to 8-bit ``L``, keeping the tonal range."""
    array = np.asarray(image)
    if image.mode == "F":
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(values) * scale, 0, 255).round()
    else:  # I;16*, I: 16-bit samples (PNG/TIFF)
        out = np.clip(array.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(out.astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image; transparency is composited onto white."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _high_bit_to_l(image)
        mode = image.mode
    has_alpha = mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValidationError(
            f"The start image has shape {tuple(array.shape)}; an image of height × width × 3 (RGB) "
            "or × 4 (RGBA) is needed. Upload a normal picture."
        )
    height, width = array.shape[:2]
    _check_size(width, height)
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = (array >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValidationError(
                "The start image contains invalid (NaN or infinite) pixel values. Upload a normal picture."
            )
        data = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        data = array.astype(np.uint8) * 255
    else:
        raise ValidationError(
            f"The start image has pixel type {array.dtype}; 8-bit images are expected. Upload a normal picture."
        )
    data = np.ascontiguousarray(data)
    if data.ndim == 2:
        return Image.fromarray(data, mode="L")
    return Image.fromarray(data, mode="RGB" if data.shape[2] == 3 else "RGBA")


def _open_file(fp: Any) -> Image.Image:
    """Open, size-check, decode (first frame) and orient an image file; returns RGB."""
    try:
        image = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ValidationError(
            f"The start image is far larger than the {MAX_PIXELS // 1_000_000}-megapixel limit. "
            "Scale it down and try again."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ValidationError(
            "The start image is not a picture the studio can read. Use a PNG, JPEG or WebP file."
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _unreadable(str(exc)) from exc
    with image:
        width, height = image.size
        _check_size(width, height)
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
        except Image.DecompressionBombError as exc:
            raise ValidationError(
                f"The start image is larger than the {MAX_PIXELS // 1_000_000}-megapixel limit. Scale it down."
            ) from exc
        except Exception as exc:  # decoders raise many types for damaged data
            raise _unreadable(str(exc) or type(exc).__name__) from exc
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # malformed EXIF: keep the pixels as stored
            oriented = image
        _check_size(*oriented.size)
        try:
            return _to_rgb(oriented)
        except (ValueError, OSError) as exc:
            raise ValidationError(
                f"The start image uses the colour mode {oriented.mode}, which cannot be converted to RGB. "
                "Save it as an RGB PNG or JPEG and try again."
            ) from exc


def load_start_image(source: Any) -> Image.Image:
    """The start image as a new 8-bit RGB PIL image.

    ``source`` is a file path, the file's bytes, a numpy array (``H×W×3`` or ``H×W×4``,
    as Gradio gives; also ``H×W`` grayscale) or a PIL image. Transparency is composited
    onto white, EXIF orientation is applied, animated images give their first frame.
    Raises ``ValidationError`` for anything that is not a usable image, smaller than 16
    pixels on a side, or larger than 40 megapixels.
    """
    if source is None:
        raise ValidationError("No start image was given. Upload a picture to animate.")
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        try:
            source.load()
        except Exception as exc:
            raise _unreadable(str(exc)) from exc
        if hasattr(source, "getexif"):
            try:
                oriented = ImageOps.exif_transpose(source)
            except Exception:
                oriented = source
        else:
            oriented = source
        try:
            return _to_rgb(oriented)
        except (ValueError, OSError) as exc:
            raise ValidationError(
                f"The start image uses the colour mode {source.mode}, which cannot be converted to RGB. "
                "Save it as an RGB PNG or JPEG and try again."
            ) from exc
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ValidationError("The start image file is empty. Upload a picture to animate.")
        return _open_file(io.BytesIO(data))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValidationError(f"The start image {path} was not found. Check the path or upload it again.")
        if not os.path.isfile(path):
            raise ValidationError(f"{path} is a folder, not an image. Choose an image file.")
        if os.path.getsize(path) == 0:
            raise ValidationError(
                f"The start image {os.path.basename(path)} is empty. Upload a picture to animate."
            )
        return _open_file(path)
    raise ValidationError(
        f"The start image was given as {type(source).__name__}; give a file path, image bytes, "
        "a numpy array or a PIL image."
    )


def _centred_span(size: int, exact: float) -> int:
    """The whole-pixel length nearest ``exact`` that leaves an equal margin on both sides."""
    span = round(exact)
    if (size - span) % 2:
        span += 1 if exact > span else -1
    return min(size, max(1, span))


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Center-crop ``image`` to the ``width:height`` aspect ratio and resize it to exactly that size.

    The crop is exactly centred (its length is rounded to keep equal margins) and taken before
    resampling, so nothing outside it bleeds in; resampling is LANCZOS. The result is RGB.
    """
    if width < 1 or height < 1:
        raise ValidationError(
            f"The video size {width}×{height} is not usable; width and height must be positive."
        )
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # too wide: trim the sides
        crop_w, crop_h = _centred_span(src_w, src_h * width / height), src_h
    else:  # too tall: trim top and bottom
        crop_w, crop_h = src_w, _centred_span(src_h, src_w * height / width)
    left = (src_w - crop_w) // 2
    top = (src_h - crop_h) // 2
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    cropped = rgb.crop((left, top, left + crop_w, top + crop_h))
    return cropped.resize((int(width), int(height)), Image.Resampling.LANCZOS)


def image_sha256(image: Image.Image) -> str:
    """A stable hex SHA-256 of the image's RGB pixels and size."""
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    digest = hashlib.sha256()
    digest.update(f"RGB:{rgb.width}x{rgb.height}:".encode("ascii"))
    digest.update(rgb.tobytes())
    return digest.hexdigest()
