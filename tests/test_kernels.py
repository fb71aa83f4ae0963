"""The CPU kernels against MLX's own: exp, silu, attention (grouped queries, every mask form, chunks)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from holo_mlx import kernels
from holo_mlx.runtime import GEMM_ROW_BLOCK, pad_rows


def test_polynomial_exp_is_float32_accurate_over_the_whole_range():
    x = mx.array(np.linspace(-87, 88, 200_001, dtype=np.float32))
    exp, _ = kernels._cpu_kernels()
    relative = mx.abs(exp(x) - mx.exp(x)) / mx.exp(x)
    assert relative.max().item() < 3e-7
    assert exp(mx.array([-mx.inf])).item() < 1e-37  # masked scores weigh nothing


def test_silu_matches_mlx():
    x = mx.random.normal((37, 300), key=mx.random.key(0)) * 8
    assert mx.allclose(kernels.silu(x), nn.silu(x), rtol=1e-6, atol=1e-6).item()


def test_log_softmax_matches_mlx():
    logits = mx.random.normal((3, 151_936), key=mx.random.key(1)) * 10
    reference = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    assert mx.abs(kernels.log_softmax(logits) - reference).max().item() < 1e-5


def _qkv(batch, heads, kv_heads, length, keys, dims=16, seed=0):
    q, k, v = (mx.random.normal(shape, key=mx.random.key(seed + i)) for i, shape in enumerate(
        [(batch, heads, length, dims), (batch, kv_heads, keys, dims), (batch, kv_heads, keys, dims)]))
    return q, k, v


MASKS = {
    "none": lambda batch, length, keys: None,
    "causal": lambda batch, length, keys: "causal",
    "bool 4d": lambda batch, length, keys: mx.random.uniform(shape=(batch, 1, length, keys), key=mx.random.key(9)) > 0.3,
    "key mask": lambda batch, length, keys: mx.arange(keys)[None, None, None, :] < mx.array([keys, keys - 3])[:batch, None, None, None],
    "additive 2d": lambda batch, length, keys: mx.random.normal((length, keys), key=mx.random.key(8)),
}


@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("chunk", [None, 64])
def test_attention_matches_mlx_sdpa(mask_kind, chunk, monkeypatch):
    if chunk:  # force several query chunks
        monkeypatch.setattr(kernels, "SCORES_PER_CHUNK", chunk * 14 * 2)
    batch, length, keys = 2, 9, 13  # queries are the last 9 positions of 13 cached keys
    q, k, v = _qkv(batch, 14, 2, length, keys)
    mask = MASKS[mask_kind](batch, length, keys)
    if mask_kind == "bool 4d":  # every query keeps one key, as real masks do
        mask = mask | (mx.arange(keys) == 0)
    ours = kernels.attention(q, k, v, scale=0.25, mask=mask)
    reference = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    assert ours.shape == reference.shape
    assert mx.abs(ours - reference).max().item() < 1e-5


def test_attention_rejects_an_unknown_mask_name():
    q, k, v = _qkv(1, 2, 2, 3, 3)
    with pytest.raises(ValueError, match="unknown attention mask"):
        kernels.attention(q, k, v, scale=1.0, mask="sliding")


@pytest.mark.parametrize("rows", [1, 2, 8, 15, 16, 17, 40])
def test_pad_rows_pads_small_batches_to_the_gemm_block(rows):
    x = mx.ones((rows, 3))
    padded = pad_rows(x)
    expected = rows if rows == 1 else -(-rows // GEMM_ROW_BLOCK) * GEMM_ROW_BLOCK
    assert padded.shape == (expected, 3)
    assert mx.array_equal(padded[:rows], x).item() and mx.all(padded[rows:] == 0).item()
