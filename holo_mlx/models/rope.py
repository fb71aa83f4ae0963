"""M-RoPE positions of Qwen2.5-VL and Qwen3-VL (one rule): a pure function of the prompt, no model state.

Text tokens advance one position on all three axes (temporal, height, width). An image's tokens
share the image's start position plus their (t, row, column) in the merged grid; the text after
it resumes at start + max(rows, columns). Decoding continues at `cache offset + delta`.
"""

import numpy as np


def rope_index(
    input_ids, image_grids: list[tuple[int, int, int]], *, image_token_id: int, spatial_merge_size: int
) -> tuple[np.ndarray, int]:
    """Positions (3, len(input_ids)) and the delta that maps a cache offset to the next position."""
    ids = np.asarray(input_ids)
    positions = np.zeros((3, len(ids)), dtype=np.int64)
    grids = iter(image_grids)
    current = index = 0
    while index < len(ids):
        if ids[index] != image_token_id:
            end = index + 1
            while end < len(ids) and ids[end] != image_token_id:
                end += 1
            positions[:, index:end] = np.arange(end - index) + current
            current += end - index
            index = end
            continue
        grid = next(grids, None)
        if grid is None:
            raise ValueError("more image tokens in the prompt than images")
        t, h, w = grid[0], grid[1] // spatial_merge_size, grid[2] // spatial_merge_size
        count = t * h * w
        if not np.all(ids[index:index + count] == image_token_id):
            raise ValueError(f"image of grid {tuple(grid)} needs {count} consecutive image tokens")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        positions[:, index:index + count] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current
        current += max(h, w)
        index += count
    if next(grids, None) is not None:
        raise ValueError("fewer image tokens in the prompt than images")
    delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, delta

