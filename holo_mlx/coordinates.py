"""Positions in the resized screenshot Holo1.5 saw -> pixels of the original screenshot.

Holo1.5 answers in the pixels of the image it was given, which the server resized (image.py).
A position scales by original / resized along each axis, as the training labels were scaled
the other way, and rounds to the nearest pixel (halves up). A position outside the image (a
model can answer one) is clamped onto its edge.
"""

import math

Size = tuple[int, int]  # (width, height)

# JSON keys whose value is an [x1, y1, x2, y2] box.
BOX_KEYS = ("bbox", "box", "bounding_box")


def to_original(value: float, resized: int, original: int) -> int:
    """One coordinate along an axis that is `resized` pixels long in the model's image."""
    pixel = math.floor(value * original / resized + 0.5)
    return min(max(pixel, 0), original - 1)


def map_point(x: float, y: float, resized: Size, original: Size) -> tuple[int, int]:
    return to_original(x, resized[0], original[0]), to_original(y, resized[1], original[1])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def map_answer(answer, resized: Size, original: Size):
    """A JSON answer with every "x"/"y" number and every box (`bbox`, `box`, `bounding_box`) in original pixels.

    Walks nested objects and lists (a navigation step nests its action); other values are kept.
    """
    if isinstance(answer, list):
        return [map_answer(item, resized, original) for item in answer]
    if not isinstance(answer, dict):
        return answer
    mapped = {}
    for key, value in answer.items():
        if key in ("x", "y") and _is_number(value):
            axis = 0 if key == "x" else 1
            mapped[key] = to_original(value, resized[axis], original[axis])
        elif key in BOX_KEYS and isinstance(value, list) and len(value) == 4 and all(map(_is_number, value)):
            x1, y1, x2, y2 = value
            mapped[key] = [*map_point(x1, y1, resized, original), *map_point(x2, y2, resized, original)]
        else:
            mapped[key] = map_answer(value, resized, original)
    return mapped
