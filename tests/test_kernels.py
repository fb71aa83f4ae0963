"""The kernels' dispatch (bound once per device), and the CPU backend's kernels against MLX's own:
exp, silu gate, log-softmax, attention (grouped queries, every mask form, chunks)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.activations import swiglu
from mlx_lm.models.gated_delta import gated_delta_update

from holo_mlx import kernels, load_model, runtime
from holo_mlx.cpu import attention as cpu_attention
from holo_mlx.cpu import gated_delta as cpu_gated_delta
from holo_mlx.cpu import polynomial_exp as cpu_kernels
from holo_mlx.cpu import tower as cpu_tower
from holo_mlx.models.qwen2_5_vl.config import VisionConfig
from holo_mlx.models.qwen2_5_vl.vision import VisionModel
from holo_mlx.testing import root_layout_config

# Where the CPU kernels and MLX's own are the same functions there is nothing to compare.
cpu_only = pytest.mark.skipif(runtime.on_gpu(), reason="the CPU backend's kernels")


@pytest.fixture
def reselect():
    yield
    kernels.select()


def test_select_binds_the_cpu_kernels_for_the_cpu(reselect):
    kernels.select(mx.cpu)
    assert kernels.attention is cpu_attention.attention
    assert kernels.swiglu is cpu_kernels.silu_gate
    assert kernels.log_softmax is cpu_kernels.log_softmax
    assert kernels.apply_rotary is kernels.rotary
    assert kernels.run_tower is cpu_tower.run_tower
    assert kernels.gated_delta is cpu_gated_delta.gated_delta_update


def test_select_binds_mlx_and_mlx_lm_kernels_for_a_gpu(reselect):
    for _ in range(2):  # selecting again changes nothing
        kernels.select(mx.Device(mx.gpu))
        assert kernels.attention is mx.fast.scaled_dot_product_attention
        assert kernels.swiglu is swiglu
        assert kernels.log_softmax is nn.log_softmax
        assert kernels.apply_rotary is kernels.compiled_rotary
        assert kernels.run_tower is kernels.tower_on_all_rows
        assert kernels.gated_delta is gated_delta_update


def test_load_model_selects_for_the_default_device(hf_root_checkpoint, reselect):
    other = mx.cpu if runtime.on_gpu() else mx.gpu
    kernels.select(other)
    load_model(hf_root_checkpoint)
    on_cpu = not runtime.on_gpu()
    assert (kernels.attention is cpu_attention.attention) == on_cpu
    assert (kernels.run_tower is cpu_tower.run_tower) == on_cpu


@pytest.mark.parametrize("shapes", [
    [((5, 2, 8), (5, 1, 8)), ((7, 3, 12), (7, 1, 12))],  # the vision tower's (seq, heads, head_dim)
    [((2, 4, 3, 16), (2, 1, 3, 16)), ((1, 4, 1, 6), (1, 1, 1, 6))],  # the decoder's (B, H, L, D)
])
def test_compiled_rotary_equals_rotary_as_shapes_change(shapes):
    for index, (x_shape, angle_shape) in enumerate(shapes):
        x, cos, sin = (mx.random.normal(shape, key=mx.random.key(index * 3 + i))
                       for i, shape in enumerate([x_shape, angle_shape, angle_shape]))
        assert mx.array_equal(kernels.compiled_rotary(x, cos, sin), kernels.rotary(x, cos, sin)).item()


@cpu_only
def test_the_gpu_kernels_give_the_cpu_kernels_features(reselect):
    # Both on the CPU device: the GPU's functions and schedule against the CPU's.
    model = VisionModel(VisionConfig.from_dict(root_layout_config("tiny")["vision_config"]))
    grids = [(1, 20, 28), (1, 12, 6)]
    pixels = mx.random.normal((sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14), key=mx.random.key(0))
    kernels.select(mx.cpu)
    on_cpu = model(pixels, grids)
    kernels.select(mx.gpu)
    assert mx.abs(model(pixels, grids) - on_cpu).max().item() < 1e-5


@cpu_only
def test_polynomial_exp_is_float32_accurate_down_to_the_normal_range():
    x = mx.array(np.linspace(-87.3, 0, 2_000_001, dtype=np.float32))
    relative = mx.abs(cpu_kernels.exp_nonpositive(x) - mx.exp(x)) / mx.exp(x)
    assert relative.max().item() < 3e-7


@cpu_only
def test_polynomial_exp_rounds_alike_in_both_kernels_at_ties():
    # x log2 e within an ulp of k + 1/2: the exponent and the polynomial must take the same n.
    halves = (np.arange(-125, 0) + 0.5) / np.float32(np.log2(np.e))
    x = np.concatenate([np.nextafter(halves.astype(np.float32), d) for d in (-np.inf, 0, np.inf)])
    x = mx.array(x[x <= 0])
    relative = mx.abs(cpu_kernels.exp_nonpositive(x) - mx.exp(x)) / mx.exp(x)
    assert relative.max().item() < 3e-7


@cpu_only
def test_polynomial_exp_of_masked_scores_is_exactly_zero():
    masked = cpu_kernels.MASKED
    x = mx.array([-90.0, -1e4, masked, masked - 1e3, 10 * masked])
    assert cpu_kernels.exp_nonpositive(x).tolist() == [0.0] * 5
    assert cpu_kernels.exp_nonpositive(mx.array([0.0, -0.0])).tolist() == [1.0, 1.0]


@cpu_only
@pytest.mark.parametrize("spread", [1, 8, 1e4])
def test_silu_gate_matches_mlx(spread):
    x = mx.random.normal((37, 300), key=mx.random.key(0)) * spread
    up = mx.random.normal((37, 300), key=mx.random.key(1))
    reference = nn.silu(x) * up
    assert mx.allclose(cpu_kernels.silu_gate(x, up), reference, rtol=1e-6, atol=1e-30).item()


@cpu_only
def test_log_softmax_matches_mlx():
    logits = mx.random.normal((3, 151_936), key=mx.random.key(1)) * 10
    assert mx.abs(cpu_kernels.log_softmax(logits) - nn.log_softmax(logits)).max().item() < 1e-5


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


@cpu_only
@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("rows", [None, 4])
def test_attention_matches_mlx_sdpa(mask_kind, rows, monkeypatch):
    batch, length, keys = 2, 9, 13  # queries are the last 9 positions of 13 cached keys
    if rows:  # force chunks of 4 query rows of one KV head (7 query heads)
        monkeypatch.setattr(cpu_attention, "QUERY_ROWS_PER_CHUNK", rows)
        monkeypatch.setattr(cpu_attention, "SCORES_PER_CHUNK", batch * 7 * rows * keys)
    q, k, v = _qkv(batch, 14, 2, length, keys)
    mask = MASKS[mask_kind](batch, length, keys)
    if mask_kind == "bool 4d":  # every query keeps one key, as real masks do
        mask = mask | (mx.arange(keys) == 0)
    ours = cpu_attention.attention(q, k, v, scale=0.25, mask=mask)
    reference = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    assert ours.shape == reference.shape
    assert mx.abs(ours - reference).max().item() < 1e-5


@cpu_only
def test_attention_rejects_an_unknown_mask_name():
    q, k, v = _qkv(1, 2, 2, 3, 3)
    with pytest.raises(ValueError, match="unknown attention mask"):
        cpu_attention.attention(q, k, v, scale=1.0, mask="sliding")


@cpu_only
def test_traced_shapes_stay_bounded(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "MAX_TRACED_SHAPES", 4)
    for keys in range(1, 12):  # attention scores of ever new widths
        x = -mx.arange(keys, dtype=mx.float32)
        assert mx.allclose(cpu_kernels.exp_nonpositive(x), mx.exp(x), rtol=3e-7).item()
        assert len(cpu_kernels._traced_shapes) <= 4
