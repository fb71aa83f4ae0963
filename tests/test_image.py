import dataclasses
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, features
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from holo_mlx.image import (
    QWEN2_5_VL_PROCESSOR,
    ImageError,
    ImageProcessorConfig,
    ImageTooLarge,
    load_image,
    preprocess_image,
    target_size,
)

CONFIG = QWEN2_5_VL_PROCESSOR
BUDGET = 1_003_520
NEEDS_WEBP = pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")


def hf_process(image: Image.Image, max_pixels: int = BUDGET) -> tuple[np.ndarray, tuple[int, ...]]:
    processor = Qwen2VLImageProcessorPil(
        image_mean=list(CONFIG.image_mean),
        image_std=list(CONFIG.image_std),
        min_pixels=CONFIG.min_pixels,
        max_pixels=max_pixels,
    )
    out = processor(images=[image], return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


def assert_parity(source, reference: Image.Image, max_pixels: int = BUDGET) -> None:
    ours = preprocess_image(source, CONFIG, max_side=None, max_pixels=max_pixels)
    pixel_values, grid_thw = hf_process(reference, max_pixels)
    assert ours.grid_thw == grid_thw
    assert ours.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(ours.pixel_values, pixel_values)
    assert ours.resized_size == (grid_thw[2] * 14, grid_thw[1] * 14)
    assert ours.original_size == reference.size


def ui_screenshot(width: int, height: int) -> Image.Image:
    """Flat colours, hard edges and text: what Holo1.5 sees, and where resampling errors show."""
    image = Image.new("RGB", (width, height), (242, 244, 247))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 48), fill=(32, 33, 36))
    for i in range(12):
        x, y = 40 + (i % 4) * (width // 4), 90 + (i // 4) * (height // 4)
        draw.rectangle((x, y, x + width // 6, y + 40), fill=(26, 115, 232), outline=(0, 0, 0))
        draw.text((x + 8, y + 12), f"Button {i} - Submit", fill=(255, 255, 255))
    draw.line((0, height - 1, width, 0), fill=(200, 30, 30), width=3)
    return image


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = 4 if mode == "RGBA" else 3
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA" if mode == "RGBA" else "RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height with no pixel data: only a decoder that never decodes accepts it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- parity with transformers' Qwen2VLImageProcessorPil ---------------------------------------

def test_parity_odd_size():
    image = random_image(333, 217)
    assert_parity(image, image)


def test_parity_screenshot_downscaled_by_max_pixels():
    image = ui_screenshot(1920, 1080)
    assert_parity(image, image)
    assert_parity(image, image, max_pixels=CONFIG.max_pixels)  # the checkpoint's ceiling: no downscale


def test_parity_tall_greyscale():
    image = random_image(64, 3000).convert("L")
    assert_parity(image, image)


def test_parity_rgba_composited_on_white():
    image = random_image(300, 170, "RGBA", seed=1)
    assert_parity(image, image)
    transparent = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    pixels = preprocess_image(transparent, CONFIG).pixel_values.reshape(-1, 3, 2 * 14 * 14)
    white = (1.0 - np.asarray(CONFIG.image_mean)) / np.asarray(CONFIG.image_std)
    np.testing.assert_allclose(pixels, np.broadcast_to(white[:, None], pixels.shape), rtol=1e-6)


def test_parity_palette_with_transparency():
    image = random_image(250, 190, seed=2).convert("P")
    assert_parity(image, image)
    image.info["transparency"] = 0
    assert_parity(image, image)


def test_parity_tiny_image_upscaled_to_min_pixels():
    image = random_image(20, 20)
    processed = preprocess_image(image, CONFIG, max_side=None, max_pixels=BUDGET)
    assert processed.resized_size == (56, 56) and processed.num_tokens == 4
    assert_parity(image, image)


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("PNG", {}),
        ("JPEG", {"quality": 85}),
        pytest.param("WEBP", {"quality": 80}, marks=NEEDS_WEBP),
        ("GIF", {"transparency": 0}),
    ],
)
def test_parity_from_encoded_bytes(fmt, options):
    image = ui_screenshot(640, 400)
    if fmt == "GIF":
        image = image.convert("P")
    data = encode(image, fmt, **options)
    assert_parity(data, Image.open(io.BytesIO(data)))


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = load_image(buffer.getvalue()).convert("RGB")
    assert decoded.getpixel((10, 10)) == (255, 0, 0)


def test_exif_orientation_applied():
    image = ui_screenshot(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = load_image(encode(image, "JPEG", exif=exif))
    assert decoded.size == (100, 200)
    assert preprocess_image(encode(image, "JPEG", exif=exif), CONFIG).original_size == (100, 200)


# --- sizes -----------------------------------------------------------------------------------

def test_defaults_cap_screenshots_at_1280_tokens():
    processed = preprocess_image(ui_screenshot(1920, 1080), CONFIG)
    assert processed.resized_size == (1316, 728)
    assert processed.grid_thw == (1, 52, 94)
    assert processed.num_tokens == 52 * 94 // 4 <= 1280
    assert processed.pixel_values.shape == (52 * 94, 3 * 2 * 14 * 14)


def test_max_side_caps_longest_side_before_smart_resize():
    # 3840x2160 -> 1440x810 -> nearest multiples of 28; without the cap only max_pixels limits it.
    assert target_size(3840, 2160, config=CONFIG, max_side=1440, max_pixels=None) == (1428, 812)
    assert target_size(3840, 2160, config=CONFIG, max_side=None, max_pixels=None) == (3836, 2156)
    assert target_size(1000, 700, config=CONFIG, max_side=1440, max_pixels=None) == (1008, 700)
    width, height = target_size(2160, 3840, config=CONFIG, max_side=1440)
    assert max(width, height) <= 1456 and width * height <= BUDGET


def test_max_side_resamples_once_from_the_original():
    # Here capping and smart_resize agree on the final size, so a single resample of the 4K
    # original must match the reference exactly; resampling twice would not.
    image = ui_screenshot(3840, 2160)
    processed = preprocess_image(image, CONFIG)
    pixel_values, grid_thw = hf_process(image)
    assert processed.grid_thw == grid_thw
    np.testing.assert_array_equal(processed.pixel_values, pixel_values)


def test_max_pixels_is_clamped_to_the_checkpoint_ceiling():
    small = dataclasses.replace(CONFIG, min_pixels=3136, max_pixels=200_000)
    width, height = target_size(1920, 1080, config=small, max_side=None, max_pixels=10**9)
    assert width * height <= 200_000 and width % 28 == height % 28 == 0


def test_extreme_aspect_ratio_rejected():
    with pytest.raises(ImageError, match="aspect ratio"):
        target_size(4020, 20, config=CONFIG)
    with pytest.raises(ImageError, match="aspect ratio"):
        preprocess_image(Image.new("RGB", (2010, 10)), CONFIG)
    assert target_size(2000, 10, config=CONFIG, max_side=None) == (812, 28)  # ratio 200 is allowed


def test_digest_tracks_pixels_and_settings():
    image = random_image(120, 90)
    first = preprocess_image(image, CONFIG)
    assert first.digest == preprocess_image(encode(image, "PNG"), CONFIG).digest
    assert first.digest != preprocess_image(random_image(120, 90, seed=5), CONFIG).digest
    assert first.digest != preprocess_image(image, CONFIG, max_pixels=56 * 56).digest


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_bytes_rejected(data):
    with pytest.raises(ImageError, match="could not decode"):
        load_image(data)


def test_truncated_image_rejected():
    data = encode(random_image(200, 200), "PNG")
    with pytest.raises(ImageError):
        preprocess_image(data[: len(data) // 2], CONFIG)


def test_non_bytes_rejected():
    with pytest.raises(ImageError, match="expected image bytes"):
        load_image("aGVsbG8=")


def test_decompression_bomb_refused_from_header():
    # 120 MP: above our limit, below the size where PIL itself refuses to open.
    with pytest.raises(ImageTooLarge, match="12000x10000 pixels"):
        load_image(png_header_only(12000, 10000))
    with pytest.raises(ImageTooLarge, match="too large"):
        load_image(png_header_only(30000, 30000))
    with pytest.raises(ImageTooLarge, match="more than"):
        load_image(encode(random_image(100, 100), "PNG"), max_decoded_pixels=5000)


# --- config ----------------------------------------------------------------------------------

def test_config_from_min_max_pixels_keys(tmp_path):
    values = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "min_pixels": 100, "max_pixels": 200}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(values))
    config = ImageProcessorConfig.from_pretrained(tmp_path)
    assert (config.image_mean, config.min_pixels, config.max_pixels) == ((0.5, 0.5, 0.5), 100, 200)


def test_config_from_transformers5_size(tmp_path):
    values = {"image_processor": {"size": {"shortest_edge": 784, "longest_edge": 1_000_000}, "merge_size": 2}}
    (tmp_path / "processor_config.json").write_text(json.dumps(values))
    config = ImageProcessorConfig.from_pretrained(tmp_path)
    assert (config.min_pixels, config.max_pixels, config.image_std) == (784, 1_000_000, CONFIG.image_std)


def test_config_defaults_without_file(tmp_path):
    assert ImageProcessorConfig.from_pretrained(tmp_path) == CONFIG
