"""Image preprocessing for Qwen2.5-VL and Qwen3-VL, identical to transformers' Qwen2VLImageProcessorPil
(both generations use it, with their checkpoint's settings).

Same steps, same order, same precision as the reference: composite transparency onto white, one
PIL bicubic resize of the uint8 image to a multiple of patch x merge pixels (28 for Holo1.5, 32
for Holo2), rescale in float64 then cast to float32, normalize in float32, then cut into patches
grouped by 2x2 merge blocks with the single frame repeated to fill the temporal patch. numpy and
PIL only.
"""

import hashlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Hcompany's Holo1.5 cookbook budget: 1,280 visual tokens of 28x28 pixels.
MAX_PIXELS = 28 * 28 * 1280
MAX_SIDE = 1440
# Refused before decoding: a few-KB PNG can claim gigapixels.
MAX_DECODED_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 200


class ImageError(ValueError):
    """The input is not a usable image (undecodable, too large, degenerate shape)."""


class ImageTooLarge(ImageError):
    """Refused from its header alone: more pixels than allowed (a decompression bomb, say)."""


@dataclass(frozen=True)
class ImageProcessorConfig:
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    min_pixels: int
    max_pixels: int  # the checkpoint's ceiling; requests ask for at most this
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, path: str | Path, defaults: "ImageProcessorConfig | None" = None) -> "ImageProcessorConfig":
        """Read preprocessor_config.json (or transformers 5's processor_config.json); what it leaves
        out comes from `defaults` (the family's processor; Qwen2.5-VL's unless given)."""
        defaults = defaults or QWEN2_5_VL_PROCESSOR
        path = Path(path)
        values: dict = {}
        if (path / "preprocessor_config.json").exists():
            values = json.loads((path / "preprocessor_config.json").read_text())
        elif (path / "processor_config.json").exists():
            values = json.loads((path / "processor_config.json").read_text()).get("image_processor", {})
        size = values.get("size") or {}
        # Top-level min/max_pixels win over `size`, as in the reference's __init__.
        min_pixels = values.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
        max_pixels = values.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
        return cls(
            image_mean=tuple(values.get("image_mean", defaults.image_mean)),
            image_std=tuple(values.get("image_std", defaults.image_std)),
            min_pixels=int(min_pixels or defaults.min_pixels),
            max_pixels=int(max_pixels or defaults.max_pixels),
            patch_size=int(values.get("patch_size", defaults.patch_size)),
            temporal_patch_size=int(values.get("temporal_patch_size", defaults.temporal_patch_size)),
            merge_size=int(values.get("merge_size", defaults.merge_size)),
            rescale_factor=float(values.get("rescale_factor", defaults.rescale_factor)),
        )


# Qwen2.5-VL's preprocessor_config.json (also Holo1.5's).
QWEN2_5_VL_PROCESSOR = ImageProcessorConfig(
    image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
    min_pixels=56 * 56, max_pixels=28 * 28 * 16384)


@dataclass
class ProcessedImage:
    pixel_values: np.ndarray  # float32 (grid_t*grid_h*grid_w, C*temporal_patch*patch*patch)
    grid_thw: tuple[int, int, int]
    original_size: tuple[int, int]  # (width, height) as decoded
    resized_size: tuple[int, int]  # (width, height) the model sees; click coordinates are in these pixels
    digest: str  # sha256 of the RGB pixels and every setting that shapes pixel_values
    merge_size: int = 2

    @property
    def num_tokens(self) -> int:
        """Number of <|image_pad|> tokens: one per merge_size x merge_size block of patches."""
        t, h, w = self.grid_thw
        return t * h * w // self.merge_size**2


def load_image(source: bytes | Image.Image, *, max_decoded_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WebP/GIF (first frame) bytes, applying EXIF orientation; PIL images pass through."""
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes or a PIL image, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source))  # lazy: reads the header only
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large to decode: {error}") from error
    except Exception as error:  # PIL raises many types for garbage input; their texts name its internals
        raise ImageError(f"could not decode image ({len(source):,} bytes): not a PNG, JPEG, WebP or GIF file") \
            from error
    width, height = image.size
    if width * height > max_decoded_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, more than the {max_decoded_pixels:,} allowed")
    try:
        image.load()
        # Browsers show photos rotated by their EXIF tag, and so does transformers' load_image.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as error:
        raise ImageError(f"could not decode {image.format} image: its data is truncated or corrupt") from error
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb: transparency (alpha band or palette/tRNS) is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with area in [min_pixels, max_pixels].

    The reference's code; its aspect-ratio check is in target_size, on the size before max_side.
    """
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def target_size(
    width: int,
    height: int,
    *,
    config: ImageProcessorConfig,
    max_side: int | None = MAX_SIDE,
    max_pixels: int | None = MAX_PIXELS,
    min_pixels: int | None = None,
) -> tuple[int, int]:
    """(width, height) the model sees: longest side capped at max_side, then smart_resize.

    max_pixels None means the checkpoint's ceiling, min_pixels None the checkpoint's floor; a
    max_pixels above the ceiling is clamped to it.
    """
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(f"image aspect ratio {ratio:.1f} exceeds {MAX_ASPECT_RATIO} ({width}x{height})")
    if max_side is not None and max(width, height) > max_side:
        longest = max(width, height)
        width, height = max(1, round(width * max_side / longest)), max(1, round(height * max_side / longest))
    max_pixels = config.max_pixels if max_pixels is None else min(max_pixels, config.max_pixels)
    min_pixels = config.min_pixels if min_pixels is None else min_pixels
    factor = config.patch_size * config.merge_size
    new_height, new_width = smart_resize(height, width, factor, min_pixels, max_pixels)
    return new_width, new_height


def patchify(image: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    """(H, W, C) -> (num_patches, C*T*P*P), patches ordered by merge block, as the vision tower expects."""
    height, width, channels = image.shape
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    patches = image.reshape(grid_h // m, m, p, grid_w // m, m, p, channels)
    patches = patches.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/m, gw/m, m, m, C, P, P)
    # A still image is one frame repeated over the temporal patch.
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return patches.reshape(grid_h * grid_w, channels * t * p * p)


def preprocess_image(
    source: bytes | Image.Image,
    config: ImageProcessorConfig,
    *,
    max_side: int | None = MAX_SIDE,
    max_pixels: int | None = MAX_PIXELS,
    min_pixels: int | None = None,
) -> ProcessedImage:
    rgb = to_rgb(load_image(source))
    width, height = target_size(
        *rgb.size, config=config, max_side=max_side, max_pixels=max_pixels, min_pixels=min_pixels
    )
    # One resample from the original: capping and smart_resize only decide the final size.
    resized = np.asarray(rgb.resize((width, height), resample=Image.Resampling.BICUBIC))
    # The reference rescales in float64 and casts to float32, then normalizes in float32.
    pixels = (resized.astype(np.float64) * config.rescale_factor).astype(np.float32)
    pixels = (pixels - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)

    settings = repr((rgb.size, (width, height), config)).encode()
    digest = hashlib.sha256(settings + rgb.tobytes()).hexdigest()
    p = config.patch_size
    return ProcessedImage(
        pixel_values=patchify(pixels, config),
        grid_thw=(1, height // p, width // p),
        original_size=rgb.size,
        resized_size=(width, height),
        digest=digest,
        merge_size=config.merge_size,
    )
