"""studio.media.images: every accepted input kind, every refusal, fit and fingerprint."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.errors import ValidationError
from studio.media.images import fit_image, image_sha256, load_start_image


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    array = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    array[:h2, :w2] = (255, 0, 0)
    array[:h2, w2:] = (0, 255, 0)
    array[h2:, :w2] = (0, 0, 255)
    array[h2:, w2:] = (255, 255, 255)
    return Image.fromarray(array, "RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def close(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries no pixels (enough for a size check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- accepted inputs


def check_quadrants(image: Image.Image, width: int = 64, height: int = 48, tol: int = 12) -> None:
    assert image.mode == "RGB"
    assert image.size == (width, height)
    assert close(image.getpixel((4, 4)), (255, 0, 0), tol)
    assert close(image.getpixel((width - 5, 4)), (0, 255, 0), tol)
    assert close(image.getpixel((4, height - 5)), (0, 0, 255), tol)
    assert close(image.getpixel((width - 5, height - 5)), (255, 255, 255), tol)


def test_path_str_and_pathlib(tmp_path: Path) -> None:
    path = tmp_path / "start.png"
    quadrants().save(path)
    check_quadrants(load_start_image(path), tol=0)
    check_quadrants(load_start_image(str(path)), tol=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_bytes_in_common_formats(fmt: str) -> None:
    data = encode(quadrants(), fmt)
    check_quadrants(load_start_image(data), tol=40 if fmt in {"JPEG", "WEBP"} else 0)
    check_quadrants(load_start_image(bytearray(data)), tol=40 if fmt in {"JPEG", "WEBP"} else 0)


def test_numpy_rgb_and_rgba_as_gradio_gives() -> None:
    rgb = np.asarray(quadrants())
    check_quadrants(load_start_image(rgb), tol=0)

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:5, :5, 3] = 0  # fully transparent corner becomes white
    image = load_start_image(rgba)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((10, 10)) == (255, 0, 0)


def test_numpy_gray_float_and_uint16() -> None:
    gray = np.full((20, 30), 77, np.uint8)
    assert load_start_image(gray).getpixel((0, 0)) == (77, 77, 77)
    assert load_start_image(gray[..., None]).getpixel((0, 0)) == (77, 77, 77)
    floats = np.full((20, 30, 3), 0.5, np.float32)
    assert load_start_image(floats).getpixel((0, 0)) == (128, 128, 128)
    wide = np.full((20, 30, 3), 65535, np.uint16)
    assert load_start_image(wide).getpixel((0, 0)) == (255, 255, 255)


def test_pil_image_is_copied_not_shared() -> None:
    original = quadrants()
    loaded = load_start_image(original)
    assert loaded is not original
    loaded.putpixel((0, 0), (1, 2, 3))
    assert original.getpixel((0, 0)) == (255, 0, 0)


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    image.paste((255, 0, 0, 128), (0, 0, 16, 32))
    loaded = load_start_image(encode(image, "PNG"))
    assert loaded.getpixel((24, 5)) == (255, 255, 255)
    assert close(loaded.getpixel((5, 5)), (255, 127, 127), 2)
    assert load_start_image(image).getpixel((24, 5)) == (255, 255, 255)
    la = Image.new("LA", (20, 20), (0, 0))
    assert load_start_image(la).getpixel((3, 3)) == (255, 255, 255)


def test_palette_grayscale_and_bilevel() -> None:
    check_quadrants(load_start_image(encode(quadrants().convert("P"), "PNG")), tol=0)
    gray = load_start_image(encode(Image.new("L", (20, 20), 90), "PNG"))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (90, 90, 90)
    bilevel = load_start_image(encode(Image.new("1", (20, 20), 1), "PNG"))
    assert bilevel.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency_gif() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    image.paste(1, (0, 0, 10, 20))
    data = encode(image, "GIF", transparency=0)
    loaded = load_start_image(data)
    assert loaded.getpixel((2, 2)) == (255, 0, 0)
    assert loaded.getpixel((15, 2)) == (255, 255, 255)


def test_sixteen_bit_grayscale_png() -> None:
    array = np.zeros((20, 20), np.uint16)
    array[:, :10] = 65535
    array[:, 10:] = 32768
    image = Image.fromarray(array)
    assert image.mode.startswith("I")
    loaded = load_start_image(encode(image, "PNG"))
    assert loaded.getpixel((2, 2)) == (255, 255, 255)
    assert loaded.getpixel((15, 2)) == (128, 128, 128)
    assert load_start_image(image).getpixel((15, 2)) == (128, 128, 128)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (24, 24), (0, 255, 255, 0))  # red
    loaded = load_start_image(encode(cmyk, "JPEG", quality=95))
    assert loaded.mode == "RGB"
    assert close(loaded.getpixel((5, 5)), (255, 0, 0), 16)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise for display
    data = encode(quadrants(), "JPEG", exif=exif, quality=95)
    loaded = load_start_image(data)
    assert loaded.size == (48, 64)
    # after a clockwise turn the stored top-left (red) is at the top-right
    assert close(loaded.getpixel((48 - 5, 4)), (255, 0, 0), 40)
    assert close(loaded.getpixel((4, 4)), (0, 0, 255), 40)


def test_animated_image_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = io.BytesIO()
    frames[0].save(data, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert close(load_start_image(data.getvalue()).getpixel((5, 5)), (255, 0, 0), 2)
    webp = io.BytesIO()
    frames[0].save(webp, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert close(load_start_image(webp.getvalue()).getpixel((5, 5)), (255, 0, 0), 2)


# --------------------------------------------------------------------------- refusals


def assert_sentence(exc: pytest.ExceptionInfo) -> None:
    message = str(exc.value)
    assert message[0].isupper() and message.endswith("."), message


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"definitely not an image" * 10, "not a picture"),
        (b"", "empty"),
        (None, "No start image"),
        (12345, "given as int"),
        ([[1, 2], [3, 4]], "given as list"),
        (np.zeros((20, 20, 2), np.uint8), "shape"),
        (np.zeros((20, 20, 3), np.int32), "pixel type"),
        (np.full((20, 20, 3), np.nan), "invalid"),
        (np.zeros((15, 100, 3), np.uint8), "at least 16 pixels"),
        (Image.new("RGB", (100, 8)), "at least 16 pixels"),
        (Image.new("L", (7000, 6000)), "40-megapixel limit"),
    ],
)
def test_refusals(source, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as exc:
        load_start_image(source)
    assert_sentence(exc)


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ["PNG", "JPEG"]:
        data = encode(noisy, fmt)
        with pytest.raises(ValidationError, match="could not be read") as exc:
            load_start_image(data[: len(data) // 2])
        assert_sentence(exc)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValidationError, match="could not be read"):
            load_start_image(path)


def test_small_file_on_disk_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.new("RGB", (10, 40)).save(path)
    with pytest.raises(ValidationError, match=r"only 10×40 pixels"):
        load_start_image(path)


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(8000, 6000))  # 48 MP declared, no pixel data
    with pytest.raises(ValidationError, match="40-megapixel limit") as exc:
        load_start_image(path)
    assert_sentence(exc)


def test_decompression_bomb_refused() -> None:
    with pytest.raises(ValidationError, match="megapixel limit") as exc:
        load_start_image(png_header_only(20000, 20000))  # 400 MP: PIL itself raises
    assert_sentence(exc)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="was not found"):
        load_start_image(tmp_path / "nope.png")
    with pytest.raises(ValidationError, match="is a folder"):
        load_start_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValidationError, match="is empty"):
        load_start_image(empty)


# --------------------------------------------------------------------------- fit and fingerprint


def test_fit_wide_source_crops_the_sides() -> None:
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, :100] = (0, 0, 255)
    array[:, 100:200] = (255, 0, 0)
    array[:, 200:] = (0, 255, 0)
    fitted = fit_image(Image.fromarray(array), 64, 64)
    assert fitted.size == (64, 64) and fitted.mode == "RGB"
    pixels = np.asarray(fitted).astype(int)
    assert np.abs(pixels - [255, 0, 0]).max() <= 2  # only the red middle third is left


def test_fit_tall_source_crops_top_and_bottom() -> None:
    array = np.zeros((300, 100, 3), np.uint8)
    array[:100] = (0, 0, 255)
    array[100:200] = (255, 0, 0)
    array[200:] = (0, 255, 0)
    fitted = fit_image(Image.fromarray(array), 160, 160)
    assert fitted.size == (160, 160)
    assert np.abs(np.asarray(fitted).astype(int) - [255, 0, 0]).max() <= 2


@pytest.mark.parametrize(("width", "height"), [(832, 480), (480, 832), (64, 64), (33, 17)])
def test_fit_keeps_the_centre_in_the_centre(width: int, height: int) -> None:
    source = np.zeros((301, 401, 3), np.uint8)
    source[140:161, 190:211] = 255  # a white square at the exact centre
    fitted = np.asarray(fit_image(Image.fromarray(source), width, height)).astype(int).sum(axis=2)
    assert fitted.shape == (height, width)
    ys, xs = np.nonzero(fitted > 300)
    assert abs(ys.mean() - (height - 1) / 2) <= 1.0
    assert abs(xs.mean() - (width - 1) / 2) <= 1.0


def test_fit_same_aspect_keeps_everything() -> None:
    fitted = fit_image(quadrants(64, 48), 32, 24)
    check_quadrants(fitted, 32, 24, tol=30)
    with pytest.raises(ValidationError):
        fit_image(quadrants(), 0, 10)


def test_image_sha256_is_stable_and_pixel_based() -> None:
    image = quadrants()
    digest = image_sha256(image)
    assert digest == image_sha256(quadrants())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == image_sha256(image.convert("RGBA"))  # same visible pixels
    assert digest == image_sha256(load_start_image(encode(image, "PNG")))
    changed = image.copy()
    changed.putpixel((0, 0), (254, 0, 0))
    assert image_sha256(changed) != digest
    flat = Image.frombytes("RGB", (4, 1), bytes(range(12)))
    square = Image.frombytes("RGB", (2, 2), bytes(range(12)))
    assert image_sha256(flat) != image_sha256(square)
