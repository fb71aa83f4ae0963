"""holo_mlx/cpu/gated_delta.py: the chunked gated delta rule equals mlx-lm's token-by-token
recurrence and transformers' chunked rule, for any length and in pieces through the state."""

import os
import re
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.gated_delta import compute_g, gated_delta_ops, gated_delta_update, normalize_qk

from holo_mlx.cpu import gated_delta as cpu_gated_delta

REPO = Path(__file__).resolve().parent.parent
BATCH, KEY_HEADS, VALUE_HEADS, KEY_DIM, VALUE_DIM = 2, 2, 4, 32, 16
LENGTHS = [1, 5, 64, 100, 300]  # a decode step, under a chunk, whole chunks, a partial last chunk
TOLERANCE = 1e-4  # relative to the reference's largest magnitude


def projections(length: int, seed: int = 0) -> dict:
    """The layer's projections for `length` tokens: q, k (normalized as the model does), v, and
    the a, b, A_log, dt_bias that make the decay and beta."""
    keys = iter(mx.random.split(mx.random.key(seed), 7))
    shape = (BATCH, length)
    q, k = normalize_qk(mx.random.normal((*shape, KEY_HEADS, KEY_DIM), key=next(keys)),
                        mx.random.normal((*shape, KEY_HEADS, KEY_DIM), key=next(keys)),
                        inv_scale=KEY_DIM**-0.5, eps=1e-6)
    return {"q": q, "k": k, "v": mx.random.normal((*shape, VALUE_HEADS, VALUE_DIM), key=next(keys)),
            "a": mx.random.normal((*shape, VALUE_HEADS), key=next(keys)),
            "b": mx.random.normal((*shape, VALUE_HEADS), key=next(keys)),
            "A_log": mx.random.normal((VALUE_HEADS,), key=next(keys)),
            "dt_bias": mx.random.normal((VALUE_HEADS,), key=next(keys))}


def rule_inputs(length: int, seed: int = 0) -> tuple:
    """(q, k, v, g, beta) as mlx-lm's gated_delta_update hands them to its recurrence."""
    p = projections(length, seed)
    return p["q"], p["k"], p["v"], compute_g(p["A_log"], p["a"], p["dt_bias"]), mx.sigmoid(p["b"])


def initial_state(seed: int = 1) -> mx.array:
    return 0.5 * mx.random.normal((BATCH, VALUE_HEADS, VALUE_DIM, KEY_DIM), key=mx.random.key(seed))


def assert_close(actual: mx.array, expected: mx.array) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    error = mx.abs(actual - expected).max().item() / mx.abs(expected).max().item()
    assert error <= TOLERANCE, error


@pytest.mark.parametrize("length", LENGTHS)
def test_chunked_equals_mlx_lm_token_by_token(length):
    inputs = rule_inputs(length)
    out, state = cpu_gated_delta.gated_delta_rule(*inputs, initial_state())
    expected_out, expected_state = gated_delta_ops(*inputs, initial_state())
    assert_close(out, expected_out)
    assert_close(state, expected_state)


@pytest.mark.parametrize("length", LENGTHS)
def test_chunked_equals_transformers_chunked_rule(length):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    q, k, v, g, beta = rule_inputs(length)
    out, state = cpu_gated_delta.gated_delta_rule(q, k, v, g, beta, initial_state())
    tensor = lambda x: torch.from_numpy(np.array(x))  # noqa: E731
    # transformers scales q by Dk ** -0.5 itself, takes the decay's log and keeps the state (Dk, Dv).
    expected_out, expected_state = torch_chunk_gated_delta_rule(
        tensor(q * KEY_DIM**0.5), tensor(k), tensor(v), tensor(mx.log(g)), tensor(beta),
        initial_state=tensor(initial_state().swapaxes(-1, -2)), output_final_state=True)
    assert_close(out, mx.array(expected_out.numpy()))
    assert_close(state, mx.array(expected_state.numpy()).swapaxes(-1, -2))


def test_pieces_through_the_state_equal_one_pass():
    """A prompt prefilled in pieces (a chunk and a bit, single tokens, a short piece, several
    chunks with a partial one), each starting from the state the last one left, equals one pass."""
    inputs = rule_inputs(300)
    out, state = cpu_gated_delta.gated_delta_rule(*inputs, initial_state())
    outs, piece_state, start = [], initial_state(), 0
    for size in (40, 1, 1, 7, 251):
        piece = [x[:, start:start + size] for x in inputs]
        piece_out, piece_state = cpu_gated_delta.gated_delta_rule(*piece, piece_state)
        outs.append(piece_out)
        start += size
    assert_close(mx.concatenate(outs, axis=1), out)
    assert_close(piece_state, state)


def test_update_equals_mlx_lm_update_from_the_projections():
    """The decay and beta come from the layer's projections as in mlx-lm; no state starts at zero."""
    p = projections(100)
    args = [p[name] for name in ("q", "k", "v", "a", "b", "A_log", "dt_bias")]
    out, state = cpu_gated_delta.gated_delta_update(*args)
    expected_out, expected_state = gated_delta_update(*args, use_kernel=False)
    assert_close(out, expected_out)
    assert_close(state, expected_state)


def test_a_decay_that_underflows_to_zero_clears_the_state():
    """g == 0 (exp of a very negative log decay in float32) forgets everything before that token,
    as the recurrence does, with no inf - inf in the chunk's cumulative log decays."""
    q, k, v, g, beta = rule_inputs(100)
    g = mx.where(mx.arange(100)[None, :, None] % 37 == 5, 0.0, g)
    out, state = cpu_gated_delta.gated_delta_rule(q, k, v, g, beta, initial_state())
    expected_out, expected_state = gated_delta_ops(q, k, v, g, beta, initial_state())
    assert not mx.isnan(out).any().item()
    assert_close(out, expected_out)
    assert_close(state, expected_state)


def test_benchmark_times_both_and_they_agree():
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_gated_delta.py", "--tokens", "70", "--key-heads", "2",
         "--value-heads", "4", "--head-dim", "32", "--runs", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(re.findall(r" ms median \([\d.]+, [\d.]+\), 2 runs", run.stdout)) == 2, run.stdout
    assert re.search(r"T 70, Hk 2, Hv 4, Dk = Dv = 32: token by token / chunked = [\d.]+x", run.stdout)
    out, state = map(float, re.search(r"max \|diff\|: out (\S+), state (\S+)", run.stdout).groups())
    assert out < 1e-5 and state < 1e-5
