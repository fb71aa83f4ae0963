"""Qwen2.5-VL vision tower: patch embed, 2D rotary, window/full attention blocks, patch merger.

Attribute names equal the checkpoint keys under `vision_tower.`. Window attention runs as one
batched attention call: windows are gathered into a padded (windows, max_len) layout with a key
mask, so there is no Python loop per window. kernels.run_tower runs the tower's rows: all at once
on a GPU, in two parts cut between windows on the CPU backend (holo_mlx/cpu/tower.py).
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import VisionConfig
from ... import kernels
from ..layers import MLP


@dataclass
class Segments:
    """Padded layout of variable-length attention segments (windows or whole images)."""

    boundaries: np.ndarray  # first row of each segment, then the end
    gather: mx.array | None  # (segments, max_len) sequence index per slot; None: one segment, no padding
    key_mask: mx.array | None  # (segments, 1, 1, max_len) True where the slot holds a real token
    unpad: mx.array | None  # (seq,) flat slot index of each sequence position

    @classmethod
    def from_boundaries(cls, boundaries: np.ndarray) -> "Segments":
        lengths = np.diff(boundaries)
        if len(lengths) == 1:
            return cls(boundaries, None, None, None)
        max_len = int(lengths.max())
        slots = np.arange(max_len)
        valid = slots[None, :] < lengths[:, None]
        # Padding slots point at the segment's first token; the key mask hides them.
        gather = np.where(valid, boundaries[:-1, None] + slots[None, :], boundaries[:-1, None])
        unpad = np.flatnonzero(valid.reshape(-1))
        return cls(
            boundaries,
            mx.array(gather.astype(np.int32)),
            mx.array(valid[:, None, None, :]),
            mx.array(unpad.astype(np.int32)),
        )

    def split(self, parts: int) -> list[tuple[slice, "Segments"]]:
        """About equal row ranges that cut only between segments, each with its own segments: work
        that stays within segments runs on each range by itself."""
        bounds = self.boundaries
        cuts = [int(np.abs(bounds - bounds[-1] * i / parts).argmin()) for i in range(1, parts)]
        cuts = sorted({0, *cuts, len(bounds) - 1})
        return [(slice(int(bounds[a]), int(bounds[b])), Segments.from_boundaries(bounds[a:b + 1] - bounds[a]))
                for a, b in zip(cuts, cuts[1:])]


@dataclass
class VisionLayout:
    """Per-request index plan for a set of images: window order, rotary angles, segments."""

    window_index: mx.array  # merge-unit order used inside the tower (windows contiguous)
    reverse_index: mx.array  # back to raster order after the merger
    rotary_positions: np.ndarray  # (seq, 2) row/column of each patch, in window order
    windows: Segments
    images: Segments


def window_index(grid_thw: list[tuple[int, int, int]], config: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Merge-unit order that makes each attention window contiguous, and window boundaries (patches)."""
    merge = config.spatial_merge_size
    window = config.window_size // merge // config.patch_size
    order, boundaries, offset = [], [0], 0
    for t, h, w in grid_thw:
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = -gh % window, -gw % window
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-1)
        nh, nw = (gh + pad_h) // window, (gw + pad_w) // window
        padded = padded.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        lengths = (padded >= 0).sum(-1).reshape(-1)
        order.append(padded[padded >= 0] + offset)
        boundaries.extend((np.cumsum(lengths[lengths > 0]) * merge * merge + boundaries[-1]).tolist())
        offset += t * gh * gw
    return np.concatenate(order), np.array(boundaries)


def patch_positions(grid_thw: list[tuple[int, int, int]], merge: int) -> np.ndarray:
    """(row, column) of each patch in the processor's order: merge blocks are contiguous."""
    rows = []
    for t, h, w in grid_thw:
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
    return np.concatenate(rows)


def vision_layout(grid_thw: list[tuple[int, int, int]], config: VisionConfig) -> VisionLayout:
    unit = config.spatial_merge_size**2
    order, window_bounds = window_index(grid_thw, config)
    positions = patch_positions(grid_thw, config.spatial_merge_size)
    positions = positions.reshape(-1, unit, 2)[order].reshape(-1, 2)
    image_bounds = np.concatenate([[0], np.cumsum([h * w for t, h, w in grid_thw for _ in range(t)])])
    return VisionLayout(
        window_index=mx.array(order.astype(np.int32)),
        reverse_index=mx.array(np.argsort(order).astype(np.int32)),
        rotary_positions=positions,
        windows=Segments.from_boundaries(window_bounds),
        images=Segments.from_boundaries(image_bounds),
    )


def segmented_attention(q, k, v, segments: Segments, scale: float) -> mx.array:
    """Attention within each segment; q, k, v are (seq, heads, head_dim)."""
    if segments.gather is None:
        q, k, v = (t.transpose(1, 0, 2)[None] for t in (q, k, v))
        out = kernels.attention(q, k, v, scale=scale)
        return out[0].transpose(1, 0, 2)
    # Gathered straight into (segments, heads, max_len, head_dim) and back: one copy each way.
    seq, heads, dims = q.shape
    max_len = segments.gather.shape[1]
    head = mx.arange(heads)
    rows = segments.gather[:, None, :] * heads + head[:, None]  # (segments, heads, max_len)
    q, k, v = (t.reshape(seq * heads, dims)[rows] for t in (q, k, v))
    out = kernels.attention(q, k, v, scale=scale, mask=segments.key_mask)
    segment, slot = segments.unpad // max_len, segments.unpad % max_len
    back = (segment[:, None] * heads + head) * max_len + slot[:, None]  # (seq, heads)
    return out.reshape(-1, dims)[back]


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def rotated_qkv(self, x, cos, sin) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v of shape (seq, heads, head_dim), q and k rotated."""
        qkv = self.qkv(x).reshape(x.shape[0], 3, self.num_heads, -1)
        return kernels.apply_rotary(qkv[:, 0], cos, sin), kernels.apply_rotary(qkv[:, 1], cos, sin), qkv[:, 2]


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.hidden_size, eps=1e-6)
        self.norm2 = nn.RMSNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config.hidden_size, config.num_heads)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, bias=True)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, segments: Segments) -> mx.array:
        """x (seq, dim) after the block: attention within each segment (windows, or whole images in
        a full-attention block), then the MLP. The steps are methods of their own, which the CPU
        backend runs on its lanes (holo_mlx/cpu/tower.py)."""
        return self.residual_mlp(x, self.attend(*self.rotated_qkv(x, cos, sin), segments))

    def rotated_qkv(self, x: mx.array, cos: mx.array, sin: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        return self.attn.rotated_qkv(self.norm1(x), cos, sin)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, segments: Segments) -> mx.array:
        return segmented_attention(q, k, v, segments, self.attn.scale)

    def residual_mlp(self, x: mx.array, attended: mx.array) -> mx.array:
        x = x + self.attn.proj(attended.reshape(x.shape[0], -1))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """The Conv3d patch embedding (Qwen3-VL's has a bias, Qwen2.5-VL's none)."""

    def __init__(self, config, bias: bool = False):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel, stride=kernel, bias=bias)

    def __call__(self, pixel_values: mx.array) -> mx.array:
        # Kernel == stride == one patch, so the Conv3d is a single GEMM over flattened patches.
        weight = self.proj.weight  # (out, t, h, w, in)
        out_dim, t, h, w, channels = weight.shape
        patches = pixel_values.reshape(-1, channels, t, h, w).transpose(0, 2, 3, 4, 1)
        embedded = patches.reshape(patches.shape[0], -1).astype(weight.dtype) @ weight.reshape(out_dim, -1).T
        return embedded + self.proj.bias if "bias" in self.proj else embedded


class VisionRotary:
    """2D rotary tables of a tower: a quarter of each head's frequencies turns with the patch's
    row, a quarter with its column, and the halves repeat (rotate-half layout)."""

    def __init__(self, head_dim: int, theta: float):
        quarter = head_dim // 2
        self.inv_freq = 1.0 / (theta ** (np.arange(0, quarter, 2, dtype=np.float32) / quarter))

    def __call__(self, positions: np.ndarray, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        """cos/sin of shape (seq, 1, head_dim) for (seq, 2) row/column positions."""
        freqs = positions[:, :, None].astype(np.float32) * self.inv_freq  # (seq, 2, head_dim/4)
        angles = freqs.reshape(len(positions), -1)
        angles = mx.array(np.concatenate([angles, angles], axis=-1))[:, None, :]
        return mx.cos(angles).astype(dtype), mx.sin(angles).astype(dtype)


class PatchMerger(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.hidden = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = nn.RMSNorm(config.hidden_size, eps=1e-6)
        self.mlp = [nn.Linear(self.hidden, self.hidden), nn.GELU(), nn.Linear(self.hidden, config.out_hidden_size)]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.ln_q(x).reshape(-1, self.hidden)
        for layer in self.mlp:
            x = layer(x)
        return x


class VisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = [VisionBlock(config) for _ in range(config.depth)]
        self.merger = PatchMerger(config)
        self.full_attention = frozenset(config.fullatt_block_indexes)
        self.rotary = VisionRotary(config.hidden_size // config.num_heads, config.rope_theta)

    def __call__(self, pixel_values: mx.array, grid_thw: list[tuple[int, int, int]]) -> mx.array:
        """Image features in prompt order: (sum of t*h*w/merge^2, out_hidden_size), evaluated."""
        layout = vision_layout(grid_thw, self.config)
        unit = self.config.spatial_merge_size**2
        # Window order from the start: every step up to the merger then works on whole windows.
        pixels = pixel_values.reshape(-1, unit, pixel_values.shape[-1])[layout.window_index]
        pixels = pixels.reshape(-1, pixel_values.shape[-1])
        dtype = self.patch_embed.proj.weight.dtype
        cos, sin = self.rotary(layout.rotary_positions, dtype)
        features = kernels.run_tower(self, pixels, cos, sin, layout.windows, layout.images)[layout.reverse_index]
        mx.eval(features)
        return features

    def rows(self, pixels: mx.array, cos: mx.array, sin: mx.array, windows: Segments, images: Segments) -> mx.array:
        """Merged features of patches in window order, in window order: the blocks attend within
        `windows`, the full-attention blocks within `images`."""
        x = self.patch_embed(pixels)
        for index, block in enumerate(self.blocks):
            x = block(x, cos, sin, images if index in self.full_attention else windows)
        return self.merger(x)
