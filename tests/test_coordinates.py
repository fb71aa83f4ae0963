"""Resized-image positions back to original pixels (holo_mlx/coordinates.py), on the server's real resizes."""

import pytest

from holo_mlx.coordinates import map_answer, map_point, to_original
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
    assert map_point(0, 0, resized, original) == (0, 0)
    # The last resized pixel lands within one resized pixel's span of the original's last pixel.
    last_x, last_y = map_point(width - 1, height - 1, resized, original)
    assert 0 <= original[0] - 1 - last_x <= original[0] / width and 0 <= original[1] - 1 - last_y <= original[1] / height
    # Every resized pixel lands inside the original, in order.
    xs = [to_original(x, width, original[0]) for x in range(width)]
    assert xs == sorted(xs) and 0 <= xs[0] and xs[-1] < original[0]
    # The center stays the center.
    cx, cy = map_point(width / 2, height / 2, resized, original)
    assert abs(cx - original[0] / 2) <= 1 and abs(cy - original[1] / 2) <= 1


def test_positions_scale_per_axis_and_round_to_the_nearest_pixel():
    # 1710x852 -> 1400x700: x scales by 1.2214 (700 -> 855.0), y by 1.2171 (350 -> 426.0).
    assert map_point(700, 350, (1400, 700), (1710, 852)) == (855, 426)
    assert map_point(1399, 1, (1400, 700), (1710, 852)) == (1709, 1)  # 1708.8 and 1.22
    assert map_point(658, 364, (1316, 728), (3840, 2160)) == (1920, 1080)
    assert map_point(1, 1, (1316, 728), (3840, 2160)) == (3, 3)  # 2.92, 2.97
    assert map_point(500.0, 250.0, (1008, 504), (1000, 500)) == (496, 248)  # 496.03, 248.02
    assert map_point(63, 0.5, (1008, 504), (1000, 500)) == (63, 0)  # 62.5 rounds half up; 0.496 down


def test_positions_off_the_image_are_clamped():
    assert map_point(-40, 5000, (1400, 700), (1710, 852)) == (0, 851)
    assert map_point(10**9, -1, (1316, 728), (3840, 2160)) == (3839, 0)


def test_answers_have_points_and_boxes_rewritten_and_nothing_else():
    resized, original = (1400, 700), (2800, 1400)  # exactly 2x
    step = {"thought": "x marks the spot", "notes": "",
            "action": {"action": "click_element", "element": "OK", "x": 100, "y": 50}}
    assert map_answer(step, resized, original) == {
        "thought": "x marks the spot", "notes": "",
        "action": {"action": "click_element", "element": "OK", "x": 200, "y": 100}}
    boxes = {"items": [{"bbox": [10, 20, 30, 40], "label": "a"}, {"box": [0, 0, 1399, 699]}],
             "bounding_box": [1, 2, 3], "x": True, "y": "12", "count": 3}
    assert map_answer(boxes, resized, original) == {
        "items": [{"bbox": [20, 40, 60, 80], "label": "a"}, {"box": [0, 0, 2798, 1398]}],
        "bounding_box": [1, 2, 3], "x": True, "y": "12", "count": 3}
    assert map_answer([{"x": 0.4, "y": 699}], resized, original) == [{"x": 1, "y": 1398}]
