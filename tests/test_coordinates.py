"""Model positions back to original pixels (holo_mlx/coordinates.py): resized-image pixels on the server's real
resizes, and 0-1000 normalized positions on odd sizes."""

import pytest

from holo_mlx.coordinates import NORMALIZED_1000, RESIZED_PIXELS, map_answer, map_point, to_original
from holo_mlx.image import ImageProcessorConfig, target_size
from holo_mlx.testing import PREPROCESSOR_CONFIG

CONFIG = ImageProcessorConfig(image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                              min_pixels=PREPROCESSOR_CONFIG["min_pixels"], max_pixels=PREPROCESSOR_CONFIG["max_pixels"])


@pytest.mark.parametrize("original, resized", [
    ((1710, 852), (1400, 700)),   # a MacBook screenshot: both sides scale differently
    ((3840, 2160), (1316, 728)),  # 4K: downscaled almost 3x
    ((1000, 500), (1008, 504)),   # slightly upscaled to multiples of 28
])
def test_the_servers_resize_maps_back_onto_the_whole_original(original, resized):
    assert target_size(*original, config=CONFIG) == resized
    width, height = resized
    assert map_point(0, 0, resized, original, RESIZED_PIXELS) == (0, 0)
    # The last resized pixel lands within one resized pixel's span of the original's last pixel.
    last_x, last_y = map_point(width - 1, height - 1, resized, original, RESIZED_PIXELS)
    assert 0 <= original[0] - 1 - last_x <= original[0] / width and 0 <= original[1] - 1 - last_y <= original[1] / height
    # Every resized pixel lands inside the original, in order.
    xs = [to_original(x, width, original[0]) for x in range(width)]
    assert xs == sorted(xs) and 0 <= xs[0] and xs[-1] < original[0]
    # The center stays the center.
    cx, cy = map_point(width / 2, height / 2, resized, original, RESIZED_PIXELS)
    assert abs(cx - original[0] / 2) <= 1 and abs(cy - original[1] / 2) <= 1


def test_positions_scale_per_axis_and_round_to_the_nearest_pixel():
    # 1710x852 -> 1400x700: x scales by 1.2214 (700 -> 855.0), y by 1.2171 (350 -> 426.0).
    assert map_point(700, 350, (1400, 700), (1710, 852), RESIZED_PIXELS) == (855, 426)
    assert map_point(1399, 1, (1400, 700), (1710, 852), RESIZED_PIXELS) == (1709, 1)  # 1708.8 and 1.22
    assert map_point(658, 364, (1316, 728), (3840, 2160), RESIZED_PIXELS) == (1920, 1080)
    assert map_point(1, 1, (1316, 728), (3840, 2160), RESIZED_PIXELS) == (3, 3)  # 2.92, 2.97
    assert map_point(500.0, 250.0, (1008, 504), (1000, 500), RESIZED_PIXELS) == (496, 248)  # 496.03, 248.02
    assert map_point(63, 0.5, (1008, 504), (1000, 500), RESIZED_PIXELS) == (63, 0)  # 62.5 rounds half up; 0.496 down


def test_positions_off_the_image_are_clamped():
    assert map_point(-40, 5000, (1400, 700), (1710, 852), RESIZED_PIXELS) == (0, 851)
    assert map_point(10**9, -1, (1316, 728), (3840, 2160), RESIZED_PIXELS) == (3839, 0)


def test_answers_have_points_and_boxes_rewritten_and_nothing_else():
    resized, original = (1400, 700), (2800, 1400)  # exactly 2x
    step = {"thought": "x marks the spot", "notes": "",
            "action": {"action": "click_element", "element": "OK", "x": 100, "y": 50}}
    assert map_answer(step, resized, original, RESIZED_PIXELS) == {
        "thought": "x marks the spot", "notes": "",
        "action": {"action": "click_element", "element": "OK", "x": 200, "y": 100}}
    boxes = {"items": [{"bbox": [10, 20, 30, 40], "label": "a"}, {"box": [0, 0, 1399, 699]}],
             "bounding_box": [1, 2, 3], "x": True, "y": "12", "count": 3}
    assert map_answer(boxes, resized, original, RESIZED_PIXELS) == {
        "items": [{"bbox": [20, 40, 60, 80], "label": "a"}, {"box": [0, 0, 2798, 1398]}],
        "bounding_box": [1, 2, 3], "x": True, "y": "12", "count": 3}
    assert map_answer([{"x": 0.4, "y": 699}], resized, original, RESIZED_PIXELS) == [{"x": 1, "y": 1398}]


# --- 0-1000 normalized (Holo2) ---------------------------------------------------------------------

def test_normalized_positions_are_fractions_of_the_original_whatever_the_resize():
    # 1917x1079 (odd on both axes): value / 1000 * original, to the nearest pixel.
    original = (1917, 1079)
    assert map_point(0, 0, (1904, 1064), original, NORMALIZED_1000) == (0, 0)
    assert map_point(500, 500, (1904, 1064), original, NORMALIZED_1000) == (959, 540)  # 958.5 rounds half up; 539.5
    assert map_point(1, 999, (1904, 1064), original, NORMALIZED_1000) == (2, 1078)  # 1.917; 1077.92
    assert map_point(250, 750, (1904, 1064), original, NORMALIZED_1000) == (479, 809)  # 479.25; 809.25
    # The model's image size plays no part: the same answer about any resize is the same pixel.
    assert map_point(333, 667, (28, 28), original, NORMALIZED_1000) == map_point(333, 667, (1904, 1064), original,
                                                                                 NORMALIZED_1000) == (638, 720)


def test_normalized_far_edge_and_beyond_are_clamped_onto_the_last_pixel():
    # 1000 is the right (bottom) edge itself: 1917 and 1079 would be one past the image.
    assert map_point(1000, 1000, (1904, 1064), (1917, 1079), NORMALIZED_1000) == (1916, 1078)
    assert map_point(1200, -3, (1904, 1064), (1917, 1079), NORMALIZED_1000) == (1916, 0)
    assert map_point(999.9, 0.2, (56, 56), (1, 1), NORMALIZED_1000) == (0, 0)  # a one-pixel image


def test_normalized_answers_have_points_and_boxes_rewritten():
    step = {"thought": "", "action": {"action": "click_element", "element": "OK", "x": 500, "y": 1000}}
    assert map_answer(step, (1904, 1064), (1917, 1079), NORMALIZED_1000) == {
        "thought": "", "action": {"action": "click_element", "element": "OK", "x": 959, "y": 1078}}
    assert map_answer({"bbox": [0, 250, 1000, 750]}, (1904, 1064), (1917, 1079), NORMALIZED_1000) == {
        "bbox": [0, 270, 1916, 809]}  # 269.75, 809.25


def test_each_space_bounds_a_schema_on_the_image():
    assert RESIZED_PIXELS.maximum((1400, 700)) == (1399, 699)
    assert RESIZED_PIXELS.extent((1400, 700)) == (1400, 700)
    assert NORMALIZED_1000.maximum((1400, 700)) == NORMALIZED_1000.maximum((28, 56)) == (1000, 1000)
    assert NORMALIZED_1000.extent((1400, 700)) == (1000, 1000)
