"""Pieces the vision tower and the decoder share."""

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_linear

from .. import kernels
from .base import ShardingError


def check_split(name: str, width: int, ranks: int, hint: str = "") -> None:
    """A ShardingError naming `name` when tensor parallelism cannot give each of `ranks` an equal share of `width`."""
    if width % ranks:
        raise ShardingError(f"{name} = {width} does not split over {ranks} ranks: tensor parallelism needs a rank "
                            f"count that divides it{hint}")


class MLP(nn.Module):
    """SwiGLU feed-forward; the vision tower's projections carry biases, the decoder's do not."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(kernels.swiglu(self.gate_proj(x), self.up_proj(x)))

    def shard(self, group: mx.distributed.Group) -> None:
        """Tensor parallelism: gate/up split by output columns, down_proj by input rows with an all-sum after it."""
        check_split("intermediate_size", self.gate_proj.weight.shape[0], group.size())
        self.gate_proj = shard_linear(self.gate_proj, "all-to-sharded", group=group)
        self.up_proj = shard_linear(self.up_proj, "all-to-sharded", group=group)
        self.down_proj = shard_linear(self.down_proj, "sharded-to-all", group=group)
