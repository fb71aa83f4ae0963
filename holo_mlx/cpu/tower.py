"""The vision tower on MLX's CPU backend: its rows in parts cut between windows, one per lane.

Window attention never looks across a window, so every step of the tower but full attention
runs on each part by itself: the patch embedding, each block's qkv, window attention and MLP, and
the merger (parts hold whole merge units, of which windows are made). Full-attention blocks join
the parts for their attention alone. While the tower runs each lane's GEMMs get their share of
OpenBLAS's threads, so that one lane's elementwise work runs beside the other's GEMM.
"""

import mlx.core as mx

from .blas import threads_shared_by_lanes
from .lanes import joined, lanes, on_lanes


def run_tower(tower, pixels: mx.array, cos: mx.array, sin: mx.array, windows, images) -> mx.array:
    """tower.rows(pixels, cos, sin, windows, images), evaluated, as the same steps over the parts.

    `tower` has patch_embed, blocks (each with rotated_qkv, attend and residual_mlp), merger and
    full_attention (the indexes of its full-attention blocks); `windows.split(n)` gives n row
    ranges cut between windows, each with its own windows.
    """
    parts = windows.split(len(lanes()))
    rows = [part_rows for part_rows, _ in parts]
    part_windows = [part for _, part in parts]
    cos_parts, sin_parts = [cos[r] for r in rows], [sin[r] for r in rows]
    with threads_shared_by_lanes():
        xs = on_lanes(tower.patch_embed, [pixels[r] for r in rows])
        for index, block in enumerate(tower.blocks):
            qs, ks, vs = zip(*on_lanes(block.rotated_qkv, xs, cos_parts, sin_parts))
            if index in tower.full_attention:
                attended = block.attend(joined(list(qs)), joined(list(ks)), joined(list(vs)), images)
                outs = [attended[r] for r in rows]
            else:
                outs = on_lanes(block.attend, qs, ks, vs, part_windows)
            xs = on_lanes(block.residual_mlp, xs, outs)
        features = joined(on_lanes(tower.merger, xs))
        mx.eval(features)  # within: the threads are shared while the work runs, not while it is built
    return features
