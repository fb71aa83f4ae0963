"""Attention on MLX's CPU backend: chunks of query rows through the polynomial exp, on the lanes.

mx.fast.scaled_dot_product_attention's CPU path computes the softmax with MLX's scalar exp; this
one takes prompts and images (more than one query) in chunks whose scores stay in cache, with the
exp of kernels.py, normalized after the product with V (L x D divisions instead of L x S), the
chunks alternating between the lanes (docs/benchmarks.md, Vision tower).
"""

import mlx.core as mx

from .polynomial_exp import MASKED, exp_nonpositive
from .lanes import joined, lanes

SCORES_PER_CHUNK = 1 << 23  # attention scores computed at once (32 MB)
QUERY_ROWS_PER_CHUNK = 1024
MIN_QUERY_ROWS = 32


def attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask=None) -> mx.array:
    """mx.fast.scaled_dot_product_attention's contract: q (B, H, L, D), k and v (B, H_kv, S, D) with
    H a multiple of H_kv (grouped queries), mask None, "causal", boolean (True = attend) or additive."""
    batch, heads, length, dims = q.shape
    if length == 1:  # a decode step's scores are small: MLX's kernel is as good
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    kv_heads, keys = k.shape[1], k.shape[2]
    # Grouped queries: each KV head serves heads // kv_heads query heads without copying K and V.
    q = mx.contiguous(q * scale).reshape(batch, kv_heads, heads // kv_heads, length, dims)
    # Contiguous once, not once per chunk (a transposed view would be copied for every matmul).
    keys_t, v = mx.contiguous(k)[:, :, None].swapaxes(-1, -2), mx.contiguous(v)[:, :, None]
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        # The L queries are the last L of the S keys' positions.
        mask = mx.arange(keys)[None, :] <= mx.arange(keys - length, keys)[:, None]
    if mask is not None:
        # Additive and finite once, so a chunk adds it in one vectorized pass.
        mask = mx.where(mask, 0.0, MASKED) if mask.dtype == mx.bool_ else mx.maximum(mask, MASKED)
        if mask.ndim == 4:  # (B, 1 or H, L, S) -> (B, 1 or H_kv, 1 or group, L, S)
            mask = mask[:, :, None] if mask.shape[1] == 1 else \
                mask.reshape(mask.shape[0], kv_heads, heads // kv_heads, *mask.shape[2:])
    streams = lanes()
    # Chunks of whole query rows of one or a few KV heads: long rows keep the GEMMs efficient, a
    # bounded chunk keeps the scores in cache, and chunks alternate between the lanes.
    # Against a long cache (a long prompt's later chunks) fewer rows keep the scores within budget.
    budget_rows = SCORES_PER_CHUNK // (batch * (heads // kv_heads) * keys)
    rows = min(length, QUERY_ROWS_PER_CHUNK, max(MIN_QUERY_ROWS, budget_rows))
    heads_step = max(1, SCORES_PER_CHUNK // (batch * (heads // kv_heads) * rows * keys))
    heads_step = min(heads_step, -(-kv_heads // len(streams)))  # one chunk per lane where heads allow
    outputs, chunk = [], 0
    for head in range(0, kv_heads, heads_step):
        head_rows = []
        for start in range(0, length, rows):
            with mx.stream(streams[chunk % len(streams)]):
                scores = q[:, head:head + heads_step, :, start:start + rows] @ keys_t[:, head:head + heads_step]
                if mask is not None:
                    scores = scores + _mask_chunk(mask, head, heads_step, start, rows, length)
                weights = exp_nonpositive(scores - scores.max(axis=-1, keepdims=True))
                head_rows.append((weights @ v[:, head:head + heads_step]) / weights.sum(axis=-1, keepdims=True))
            chunk += 1
        outputs.append(joined(head_rows, axis=-2))
    out = joined(outputs, axis=1)
    return out.reshape(batch, heads, length, dims)


def _mask_chunk(mask: mx.array, head: int, heads: int, start: int, rows: int, length: int) -> mx.array:
    """The part of a (B, 1 or H_kv, 1 or group, 1 or L, S) or (1 or L, S) mask that a chunk sees."""
    if mask.ndim == 5 and mask.shape[1] > 1:
        mask = mask[:, head:head + heads]
    return mask[..., start:start + rows, :] if mask.shape[-2] == length else mask
