"""Positions a model answered about the image it saw -> pixels of the original screenshot.

Each family declares its coordinate space (`Family.coordinates`). Holo1.5 answers in the pixels of
the image it was given, which the server resized (image.py): `RESIZED_PIXELS`, x in [0, width - 1].
Holo2 answers 0-1000 on each axis whatever the image's size: `NORMALIZED_1000`, 0 the left (top)
edge and 1000 the right (bottom) one.

One rule maps both: a coordinate is a fraction value / extent of its axis, where the extent is the
resized image's length in pixels or 1000, and lands on original * value / extent (as the training
labels were scaled the other way), rounded to the nearest pixel, halves up. A position outside the
image (a model can answer one) is clamped onto its edge, and so is the far edge itself: 1000 of a
1917-pixel-wide screenshot is pixel 1916, its last.
"""

import math
from dataclasses import dataclass

Size = tuple[int, int]  # (width, height)

# JSON keys whose value is an [x1, y1, x2, y2] box.
BOX_KEYS = ("bbox", "box", "bounding_box")


@dataclass(frozen=True)
class CoordinateSpace:
    """How a family's answers write a position on the image it saw."""

    name: str  # as /health reports it
    scale: int | None  # every axis runs 0..scale whatever the image; None: the resized image's pixels
    axis_descriptions: tuple[str, str]  # what a schema tells the model x and y are

    def extent(self, resized: Size) -> Size:
        """The length of each axis in this space: value / extent is the fraction across the image."""
        return resized if self.scale is None else (self.scale, self.scale)

    def maximum(self, resized: Size) -> Size:
        """The largest x and y a schema allows on a `resized` image: its last pixel, or the scale (the far edge)."""
        return (resized[0] - 1, resized[1] - 1) if self.scale is None else (self.scale, self.scale)


RESIZED_PIXELS = CoordinateSpace("resized_pixels", scale=None, axis_descriptions=(
    "The x coordinate, number of pixels from the left edge.", "The y coordinate, number of pixels from the top edge."))
# Hcompany's words for Holo2's localization schema.
NORMALIZED_1000 = CoordinateSpace("normalized_1000", scale=1000, axis_descriptions=(
    "X coordinate as integer in [0, 1000]", "Y coordinate as integer in [0, 1000]"))
SPACES = {space.name: space for space in (RESIZED_PIXELS, NORMALIZED_1000)}


def to_original(value: float, extent: int, original: int) -> int:
    """One coordinate along an axis `extent` long in the model's space and `original` pixels long in the screenshot."""
    pixel = math.floor(value * original / extent + 0.5)
    return min(max(pixel, 0), original - 1)


def map_point(x: float, y: float, resized: Size, original: Size, space: CoordinateSpace) -> tuple[int, int]:
    """A position in `space` about the image as resized -> pixels of the original."""
    extent = space.extent(resized)
    return to_original(x, extent[0], original[0]), to_original(y, extent[1], original[1])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def map_answer(answer, resized: Size, original: Size, space: CoordinateSpace):
    """A JSON answer with every "x"/"y" number and every box (`bbox`, `box`, `bounding_box`) in original pixels.

    Walks nested objects and lists (a navigation step nests its action); other values are kept.
    """
    if isinstance(answer, list):
        return [map_answer(item, resized, original, space) for item in answer]
    if not isinstance(answer, dict):
        return answer
    extent = space.extent(resized)
    mapped = {}
    for key, value in answer.items():
        if key in ("x", "y") and _is_number(value):
            axis = 0 if key == "x" else 1
            mapped[key] = to_original(value, extent[axis], original[axis])
        elif key in BOX_KEYS and isinstance(value, list) and len(value) == 4 and all(map(_is_number, value)):
            x1, y1, x2, y2 = value
            mapped[key] = [*map_point(x1, y1, resized, original, space), *map_point(x2, y2, resized, original, space)]
        else:
            mapped[key] = map_answer(value, resized, original, space)
    return mapped
