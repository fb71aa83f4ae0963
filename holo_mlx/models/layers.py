"""Pieces the vision tower and the decoder share."""

import mlx.core as mx
import mlx.nn as nn

from .. import kernels


class MLP(nn.Module):
    """SwiGLU feed-forward; the vision tower's projections carry biases, the decoder's do not."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(kernels.swiglu(self.gate_proj(x), self.up_proj(x)))
