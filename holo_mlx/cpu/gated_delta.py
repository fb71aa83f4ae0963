"""The gated delta rule (Gated DeltaNet's recurrence) on MLX's CPU backend, in chunks for prefill.

mlx-lm's `gated_delta_update` runs a Metal kernel on a GPU, but on the CPU backend its
`gated_delta_ops`: one step of small ops per token, so a prompt costs thousands of ops per layer.
Here a prompt goes in chunks of CHUNK tokens, the chunked form of transformers'
`torch_chunk_gated_delta_rule` and fla's (the WY/UT transform: a lower-triangular inverse per
chunk): the work inside the chunks is batched matrix products over all of them at once, and only
the state's hand-over from one chunk to the next is sequential. A decode step (one token) is the
recurrence's single step for the whole batch.

Same contract as mlx-lm's: q and k (B, T, Hk, Dk) normalized by `normalize_qk` (q carries the
Dk ** -0.5 scale), v (B, T, Hv, Dv), g (the decay, in (0, 1]) and beta (B, T, Hv), the state
(B, Hv, Dv, Dk) in float32; Hv a multiple of Hk, each key head serving consecutive value heads.
"""

import mlx.core as mx
from mlx_lm.models.gated_delta import compute_g

# The state's products cost the same for any chunk size, those inside a chunk grow with it: 32 was
# faster than 16 and 64 here (benchmarks/bench_gated_delta.py).
CHUNK = 32
# Below the log of float32's smallest subnormal: a decay that underflowed to 0 stays exactly 0
# through exp, while the cumulative sums of log decays stay finite (no inf - inf).
LOG_ZERO = -104.0


def gated_delta_step(q, k, v, g, beta, state):
    """One token (T == 1) for every row of the batch: decay, the delta rule's update, the read."""
    heads = v.shape[2]
    q, k = (mx.repeat(x[:, 0], heads // x.shape[2], axis=1)[..., None] for x in (q, k))  # (B, Hv, Dk, 1)
    state = state * g[:, 0, :, None, None]
    delta = (v[:, 0, :, :, None] - state @ k) * beta[:, 0, :, None, None]  # (B, Hv, Dv, 1)
    state = state + delta @ k.swapaxes(-1, -2)
    return (state @ q)[:, None, ..., 0].astype(q.dtype), state


def gated_delta_chunked(q, k, v, g, beta, state):
    """Any number of tokens in chunks of CHUNK (fewer if T is shorter), the last one padded with
    tokens that neither write (k = 0) nor decay (g = 1) the state."""
    dtype, (batch, length, key_heads, _), (heads, value_dim) = q.dtype, k.shape, v.shape[2:]
    size = min(CHUNK, length)
    pad = -length % size
    chunks = (length + pad) // size

    def chunked(x):  # (B, T, Hv, ...) -> (B, Hv, chunks, size, ...), float32
        x = mx.pad(x.astype(mx.float32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.swapaxes(1, 2).reshape(batch, heads, chunks, size, *x.shape[3:])

    q, k = (chunked(mx.repeat(x, heads // key_heads, axis=2)) for x in (q, k))
    v, beta = chunked(v), chunked(beta)
    log_decay = mx.cumsum(chunked(mx.maximum(mx.log(g.astype(mx.float32)), LOG_ZERO)), axis=-1)
    # decay[i, j]: the state's decay from token j to token i of a chunk (i >= j), 0 above.
    causal = mx.tril(mx.ones((size, size), dtype=mx.bool_))
    decay = mx.exp(mx.where(causal, log_decay[..., :, None] - log_decay[..., None, :], -mx.inf))
    k_beta = k * beta[..., None]
    # (I + L) [u | w] = [beta v | beta k decay-from-chunk-start], L the strictly lower interactions
    # of the chunk's keys: u are the values each token writes, w how much each reads of the state
    # before the chunk, both after the earlier tokens of the chunk wrote theirs.
    lower = (k_beta @ k.swapaxes(-1, -2)) * decay * mx.tril(mx.ones((size, size)), -1)
    inverse = mx.linalg.tri_inv(lower + mx.eye(size), upper=False, stream=mx.cpu)
    u = inverse @ (v * beta[..., None])
    w = inverse @ (k_beta * mx.exp(log_decay)[..., None])
    attend = (q @ k.swapaxes(-1, -2)) * decay
    q_decayed = q * mx.exp(log_decay)[..., None]
    k_decayed = k * mx.exp(log_decay[..., -1:] - log_decay)[..., None]
    chunk_decay = mx.exp(log_decay[..., -1])[..., None, None]

    state = state.astype(mx.float32).swapaxes(-1, -2)  # (B, Hv, Dk, Dv) for the products below
    outputs = []
    for n in range(chunks):
        written = u[:, :, n] - w[:, :, n] @ state
        outputs.append(q_decayed[:, :, n] @ state + attend[:, :, n] @ written)
        state = state * chunk_decay[:, :, n] + k_decayed[:, :, n].swapaxes(-1, -2) @ written
    out = mx.stack(outputs, axis=2).reshape(batch, heads, -1, value_dim)[:, :, :length]
    return out.swapaxes(1, 2).astype(dtype), state.swapaxes(-1, -2)


def gated_delta_rule(q, k, v, g, beta, state=None):
    """mlx-lm's `gated_delta_ops` contract: (out (B, T, Hv, Dv), new state)."""
    batch, length, _, key_dim = k.shape
    heads, value_dim = v.shape[2:]
    if state is None:
        state = mx.zeros((batch, heads, value_dim, key_dim), dtype=mx.float32)
    if length == 1:
        return gated_delta_step(q, k, v, g, beta, state)
    return gated_delta_chunked(q, k, v, g, beta, state)


def gated_delta_update(q, k, v, a, b, A_log, dt_bias, state=None):
    """mlx-lm's `gated_delta_update` (no mask, default gating): the decay and beta from the layer's
    projections, then gated_delta_rule()."""
    return gated_delta_rule(q, k, v, compute_g(A_log, a, dt_bias), mx.sigmoid(b), state)
