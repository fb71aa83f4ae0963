"""The vision tower's window plan: parts cut between windows, lanes that do not change results, and
OpenBLAS threads shared by the lanes."""

from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np
import pytest

from holo_mlx import runtime
from holo_mlx.models.qwen2_5_vl import vision
from holo_mlx.models.qwen2_5_vl.config import VisionConfig
from holo_mlx.testing import root_layout_config
from holo_mlx.models.qwen2_5_vl.vision import VisionModel, WindowPart, window_index

CONFIG = VisionConfig.from_dict(root_layout_config("tiny")["vision_config"])
# Two images whose sides are not multiples of the window: windows of several lengths.
GRIDS = [(1, 20, 28), (1, 12, 6)]


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_window_parts_cover_the_sequence_and_cut_only_between_windows(parts):
    _, boundaries = window_index(GRIDS, CONFIG)
    split = WindowPart.split(boundaries, parts)
    assert len(split) == parts
    assert [p.start for p in split] == [0] + [p.stop for p in split[:-1]]
    assert split[-1].stop == boundaries[-1] == sum(t * h * w for t, h, w in GRIDS)
    assert all(p.start in boundaries and p.stop in boundaries for p in split)
    # Each part's segments are its own windows: the padded slots it keeps are exactly its rows.
    for part in split:
        assert part.windows.unpad.size == part.stop - part.start
    sizes = [p.stop - p.start for p in split]
    assert max(sizes) - min(sizes) <= 2 * np.diff(boundaries).max()


@pytest.mark.skipif(runtime.on_gpu(), reason="Metal runs on one lane")
def test_tower_output_is_the_same_on_one_lane_and_on_two(monkeypatch):
    model = VisionModel(CONFIG)
    pixels = mx.random.normal((sum(t * h * w for t, h, w in GRIDS), 3 * 2 * 14 * 14), key=mx.random.key(0))
    two_lanes = model(pixels, GRIDS)
    assert len(vision.lanes()) == 2  # the CPU backend: every block ran as two parts
    monkeypatch.setattr(vision, "lanes", lambda: [mx.default_stream(mx.default_device())])
    one_lane = model(pixels, GRIDS)
    assert mx.abs(two_lanes - one_lane).max().item() < 1e-6


def test_tower_runs_in_another_thread_after_this_one():
    # MLX streams belong to the thread that made them: each thread needs lanes of its own.
    model = VisionModel(CONFIG)
    pixels = mx.random.normal((sum(t * h * w for t, h, w in GRIDS), 3 * 2 * 14 * 14), key=mx.random.key(0))
    here = model(pixels, GRIDS)
    mx.eval(here)
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(lambda: np.array(model(pixels, GRIDS))).result()
    assert np.abs(np.array(here) - there).max() < 1e-6


def test_lanes_share_openblas_threads_while_the_tower_runs_and_give_them_back():
    controls = runtime._openblas_threads()
    if controls is None:
        pytest.skip("OpenBLAS is not this process's BLAS")
    get_threads, set_threads = controls
    original = get_threads()
    set_threads(4)  # a known count, whatever earlier tests did
    try:
        with pytest.raises(RuntimeError), runtime.blas_threads_shared_by_lanes():
            assert get_threads() == 4 // len(runtime.lanes())
            raise RuntimeError("a failed encode")
        assert get_threads() == 4
    finally:
        set_threads(original)
