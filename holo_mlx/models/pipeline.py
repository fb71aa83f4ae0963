"""Pipeline parallelism, as mlx-lm's PipelineMixin: each rank of an mlx.launch group runs its own
stretch of whole decoder layers (the last rank the first layers, rank 0 the last, as mlx-lm orders them). A
pass goes from rank to rank once, one hidden state per token crossing each link, then rank 0's
output is gathered to every rank. It moves fewer bytes than tensor parallelism (Decoder.shard) but
runs the ranks one after another.
"""

from dataclasses import dataclass

import mlx.core as mx

from .base import ShardingError


@dataclass(frozen=True)
class PipelineStage:
    """The layers [start, end) one rank runs, and the hand-over between ranks around them."""

    group: mx.distributed.Group
    start: int
    end: int

    @classmethod
    def of(cls, group: mx.distributed.Group, layers: int) -> "PipelineStage":
        """An even split (the lower ranks take one more where it is uneven); rank 0 runs the last layers."""
        rank, size = group.rank(), group.size()
        if layers < size:
            raise ShardingError(f"{layers} decoder layers do not split over {size} pipeline ranks")
        counts = [layers // size + (r < layers % size) for r in range(size)]
        start = sum(counts[rank + 1:])
        return cls(group, start, start + counts[rank])

    def receive(self, x: mx.array) -> mx.array:
        """The hidden states from the rank running the layers before this one's (the input itself on the first)."""
        rank, size = self.group.rank(), self.group.size()
        return x if rank == size - 1 else mx.distributed.recv_like(x, rank + 1, group=self.group)

    def hand_on(self, x: mx.array, last_rows: mx.array | None) -> mx.array:
        """Send this rank's output on, then every rank gets rank 0's (the final layer's) output.
        Whoever evaluates a pass evaluates its output, so the send runs even for a prefill chunk
        whose logits nobody reads."""
        if self.group.rank() != 0:
            x = mx.distributed.send(x, self.group.rank() - 1, group=self.group)
            if last_rows is not None:  # rank 0's final layer kept each sequence's last row
                x = x[last_rows]
        return mx.distributed.all_gather(x, group=self.group)[:x.shape[0]]
