"""Qwen3-VL vision tower: patch embed plus learned positions resampled to each image's grid, 2D
rotary, full attention within each image, the patch merger, and the DeepStack mergers.

Attribute names equal the checkpoint keys under `vision_tower.`. The tower returns one row per
image token: the merger's features, then each DeepStack merger's, side by side (models/vlm.py
places them).
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ... import kernels
from ..qwen2_5_vl.vision import PatchEmbed, Segments, VisionRotary, patch_positions, segmented_attention
from .config import VisionConfig


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, images: Segments) -> mx.array:
        qkv = self.qkv(x).reshape(x.shape[0], 3, self.num_heads, -1)
        q, k = kernels.apply_rotary(qkv[:, 0], cos, sin), kernels.apply_rotary(qkv[:, 1], cos, sin)
        return self.proj(segmented_attention(q, k, qkv[:, 2], images, self.scale).reshape(x.shape[0], -1))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(dim, hidden_dim, bias=True)
        self.linear_fc2 = nn.Linear(hidden_dim, dim, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_fc2(nn.gelu_approx(self.linear_fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config.hidden_size, config.num_heads)
        self.mlp = VisionMLP(config.hidden_size, config.intermediate_size)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, images: Segments) -> mx.array:
        x = x + self.attn(self.norm1(x), cos, sin, images)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """merge x merge neighbouring patches -> one decoder token; the DeepStack mergers normalize
    after the shuffle (over the concatenated patches), the final merger before it."""

    def __init__(self, config: VisionConfig, postshuffle_norm: bool):
        super().__init__()
        self.hidden = config.hidden_size * config.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.norm = nn.LayerNorm(self.hidden if postshuffle_norm else config.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.hidden, self.hidden)
        self.linear_fc2 = nn.Linear(self.hidden, config.out_hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.norm(x.reshape(-1, self.hidden)) if self.postshuffle_norm else self.norm(x).reshape(-1, self.hidden)
        return self.linear_fc2(nn.gelu(self.linear_fc1(x)))


def position_taps(grid_thw: list[tuple[int, int, int]], side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling (align_corners) of the side x side learned position grid to each image's
    patch grid: 4 table rows and their weights per patch, in the processor's patch order."""
    indices, weights = [], []
    for (t, h, w), (rows, columns) in zip(grid_thw, _split(patch_positions(grid_thw, merge), grid_thw)):
        taps = []
        for position, size in ((rows, h), (columns, w)):
            source = position.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
            floor = np.floor(source)
            offsets = np.arange(2)
            tap = np.clip(floor[:, None].astype(np.int64) + offsets, 0, side - 1)
            weight = np.clip(1 - np.abs(source[:, None] - floor[:, None] - offsets), 0, None).astype(np.float32)
            taps.append((tap, weight))
        (h_tap, h_weight), (w_tap, w_weight) = taps
        indices.append((h_tap[:, :, None] * side + w_tap[:, None, :]).reshape(-1, 4))
        weights.append((h_weight[:, :, None] * w_weight[:, None, :]).reshape(-1, 4))
    return np.concatenate(indices), np.concatenate(weights)


def _split(positions: np.ndarray, grid_thw) -> list[tuple[np.ndarray, np.ndarray]]:
    """patch_positions' (row, column) rows cut per image."""
    bounds = np.cumsum([0] + [t * h * w for t, h, w in grid_thw])
    return [(positions[a:b, 0], positions[a:b, 1]) for a, b in zip(bounds, bounds[1:])]


class VisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config, bias=True)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = [VisionBlock(config) for _ in range(config.depth)]
        self.merger = PatchMerger(config, postshuffle_norm=False)
        self.deepstack_merger_list = [PatchMerger(config, postshuffle_norm=True)
                                      for _ in config.deepstack_visual_indexes]
        self.side = int(config.num_position_embeddings**0.5)
        self.rotary = VisionRotary(config.hidden_size // config.num_heads, config.rope_theta)

    def __call__(self, pixel_values: mx.array, grid_thw: list[tuple[int, int, int]]) -> mx.array:
        """(tokens, out_hidden_size * (1 + DeepStack levels)) in prompt order, evaluated."""
        merge = self.config.spatial_merge_size
        dtype = self.patch_embed.proj.weight.dtype
        indices, weights = position_taps(grid_thw, self.side, merge)
        x = self.patch_embed(pixel_values)
        x = x + (self.pos_embed(mx.array(indices)) * mx.array(weights)[..., None].astype(dtype)).sum(axis=1)
        cos, sin = self.rotary(patch_positions(grid_thw, merge), dtype)
        images = Segments.from_boundaries(np.cumsum([0] + [h * w for t, h, w in grid_thw for _ in range(t)]))
        levels = []
        for index, block in enumerate(self.blocks):
            x = block(x, cos, sin, images)
            if index in self.config.deepstack_visual_indexes:
                levels.append(self.deepstack_merger_list[self.config.deepstack_visual_indexes.index(index)](x))
        features = mx.concatenate([self.merger(x), *levels], axis=-1)
        mx.eval(features)
        return features
