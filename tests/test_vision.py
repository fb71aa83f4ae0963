"""The vision tower's window plan, and its CPU schedule: parts cut between windows, lanes that do not
change results, and OpenBLAS threads shared by the lanes."""

from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np
import pytest

from holo_mlx import kernels, runtime
from holo_mlx.cpu import blas, lanes, tower
from holo_mlx.models.qwen2_5_vl.config import VisionConfig
from holo_mlx.models.qwen2_5_vl.vision import Segments, VisionModel, window_index
from holo_mlx.testing import root_layout_config

CONFIG = VisionConfig.from_dict(root_layout_config("tiny")["vision_config"])
# Two images whose sides are not multiples of the window: windows of several lengths.
GRIDS = [(1, 20, 28), (1, 12, 6)]
cpu_only = pytest.mark.skipif(runtime.on_gpu(), reason="lanes are the CPU backend's")


def _pixels():
    return mx.random.normal((sum(t * h * w for t, h, w in GRIDS), 3 * 2 * 14 * 14), key=mx.random.key(0))


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_window_parts_cover_the_sequence_and_cut_only_between_windows(parts):
    _, boundaries = window_index(GRIDS, CONFIG)
    split = Segments.from_boundaries(boundaries).split(parts)
    assert len(split) == parts
    rows = [part_rows for part_rows, _ in split]
    assert [r.start for r in rows] == [0] + [r.stop for r in rows[:-1]]
    assert rows[-1].stop == boundaries[-1] == sum(t * h * w for t, h, w in GRIDS)
    assert all(r.start in boundaries and r.stop in boundaries for r in rows)
    # Each part's segments are its own windows: the padded slots it keeps are exactly its rows.
    for part_rows, windows in split:
        assert windows.unpad.size == part_rows.stop - part_rows.start
    sizes = [r.stop - r.start for r in rows]
    assert max(sizes) - min(sizes) <= 2 * np.diff(boundaries).max()


@cpu_only
def test_tower_output_is_the_same_on_two_lanes_on_one_and_in_one_pass(monkeypatch):
    model = VisionModel(CONFIG)
    two_lanes = model(_pixels(), GRIDS)
    assert len(lanes.lanes()) == 2  # the CPU backend: every block ran as two parts
    monkeypatch.setattr(tower, "lanes", lambda: [mx.default_stream(mx.cpu)])
    one_lane = model(_pixels(), GRIDS)
    monkeypatch.setattr(kernels, "run_tower", kernels.tower_on_all_rows)  # as a GPU runs it
    one_pass = model(_pixels(), GRIDS)
    assert mx.abs(two_lanes - one_lane).max().item() < 1e-6
    assert mx.abs(two_lanes - one_pass).max().item() < 1e-6


def test_tower_runs_in_another_thread_after_this_one():
    # MLX streams belong to the thread that made them: each thread needs lanes of its own.
    model = VisionModel(CONFIG)
    pixels = _pixels()
    here = model(pixels, GRIDS)
    mx.eval(here)
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(lambda: np.array(model(pixels, GRIDS))).result()
    assert np.abs(np.array(here) - there).max() < 1e-6


@cpu_only
def test_lanes_share_openblas_threads_while_the_tower_runs_and_give_them_back():
    controls = blas._openblas_threads()
    if controls is None:
        pytest.skip("OpenBLAS is not this process's BLAS")
    get_threads, set_threads = controls
    original = get_threads()
    set_threads(4)  # a known count, whatever earlier tests did
    try:
        with pytest.raises(RuntimeError), blas.threads_shared_by_lanes():
            assert get_threads() == 4 // len(lanes.lanes())
            raise RuntimeError("a failed encode")
        assert get_threads() == 4
    finally:
        set_threads(original)
