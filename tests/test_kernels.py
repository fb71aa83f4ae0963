"""The CPU kernels against MLX's own: exp, silu gate, log-softmax, attention (grouped queries, every mask form, chunks)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from holo_mlx import kernels


def test_polynomial_exp_is_float32_accurate_down_to_the_normal_range():
    x = mx.array(np.linspace(-87.3, 0, 2_000_001, dtype=np.float32))
    relative = mx.abs(kernels.exp_nonpositive(x) - mx.exp(x)) / mx.exp(x)
    assert relative.max().item() < 3e-7


def test_polynomial_exp_rounds_alike_in_both_kernels_at_ties():
    # x log2 e within an ulp of k + 1/2: the exponent and the polynomial must take the same n.
    halves = (np.arange(-125, 0) + 0.5) / np.float32(np.log2(np.e))
    x = np.concatenate([np.nextafter(halves.astype(np.float32), d) for d in (-np.inf, 0, np.inf)])
    x = mx.array(x[x <= 0])
    relative = mx.abs(kernels.exp_nonpositive(x) - mx.exp(x)) / mx.exp(x)
    assert relative.max().item() < 3e-7


def test_polynomial_exp_of_masked_scores_is_exactly_zero():
    x = mx.array([-90.0, -1e4, kernels.MASKED, kernels.MASKED - 1e3, 10 * kernels.MASKED])
    assert kernels.exp_nonpositive(x).tolist() == [0.0] * 5
    assert kernels.exp_nonpositive(mx.array([0.0, -0.0])).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("spread", [1, 8, 1e4])
def test_silu_gate_matches_mlx(spread):
    x = mx.random.normal((37, 300), key=mx.random.key(0)) * spread
    up = mx.random.normal((37, 300), key=mx.random.key(1))
    reference = nn.silu(x) * up
    assert mx.allclose(kernels.silu_gate(x, up), reference, rtol=1e-6, atol=1e-30).item()


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
    "additive per head": lambda batch, length, keys: mx.random.normal((batch, 14, length, keys), key=mx.random.key(7)),
    "additive 2d": lambda batch, length, keys: mx.random.normal((length, keys), key=mx.random.key(8)),
    # transformers' additive form: -inf or the dtype's lowest value where a key is hidden
    "additive -inf": lambda batch, length, keys: mx.where(mx.arange(keys) < keys - 2, 0.0, -mx.inf)[None, None, None],
    "additive lowest": lambda batch, length, keys: mx.where(mx.tri(length, keys, keys - length) > 0, 0.0,
                                                            np.finfo(np.float32).min)[None, None],
}


@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("rows", [None, 4])
def test_attention_matches_mlx_sdpa(mask_kind, rows, monkeypatch):
    batch, length, keys = 2, 9, 13  # queries are the last 9 positions of 13 cached keys
    if rows:  # force chunks of 4 query rows of one KV head (7 query heads)
        monkeypatch.setattr(kernels, "QUERY_ROWS_PER_CHUNK", rows)
        monkeypatch.setattr(kernels, "SCORES_PER_CHUNK", batch * 7 * rows * keys)
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


def test_traced_shapes_stay_bounded(monkeypatch):
    monkeypatch.setattr(kernels, "MAX_TRACED_SHAPES", 4)
    for keys in range(1, 12):  # attention scores of ever new widths
        x = -mx.arange(keys, dtype=mx.float32)
        assert mx.allclose(kernels.exp_nonpositive(x), mx.exp(x), rtol=3e-7).item()
        assert len(kernels._traced_shapes) <= 4
