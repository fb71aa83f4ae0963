"""Per-layer caches: what a family's `make_cache()` returns, and all the engine may do with them.

Each layer kind declares its cache. The engine never looks inside one; it only calls this
protocol (mlx-lm's cache objects extended with what a server's prefix cache needs):

    cache.trimmable           any shorter prefix of it is valid (KV), or only its exact length
                              (a recurrent state, which folds every token in)
    cache.state               its arrays, for mx.eval / mx.async_eval
    cache.reserve(length)     room for `length` tokens in one allocation (a hint)
    cache.snapshot()          its state at the current length: immutable arrays, kept as they are
    Class.restore(snapshot, length)
                              a fresh cache holding the first `length` tokens of a snapshot
                              (a non-trimmable one: exactly the snapshot's length)
    cache.batch_row()         this one sequence as a row of a batch cache, which has
        batch.filter(rows)    keep these rows, in this order
        batch.extend(other)   append another batch's rows (the KV batch left-pads the shorter)
    cache.make_mask(length)   the mask its layer kind needs for `length` new tokens (mlx-lm's)

A batch only ever receives whole, separately prefilled rows and then one token per row per step,
so padding never enters a recurrent state: the left padding of a batch lives in its KV columns
alone, where the attention mask hides it.
"""

from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, BatchKVCache, KVCache

Snapshot = tuple[mx.array, ...]


def snapshot_bytes(snapshot: Snapshot | None) -> int:
    return sum(array.nbytes for array in snapshot) if snapshot is not None else 0


def all_trimmable(caches: Sequence) -> bool:
    """Whether a prefix of any length can be reused from these layers' caches."""
    return all(cache.trimmable for cache in caches)


class KVLayerCache(KVCache):
    """Keys and values of an attention layer for one sequence (mlx-lm's KVCache)."""

    trimmable = True

    def reserve(self, length: int) -> None:
        # One allocation of the whole length: growing a step at a time would copy the KV at every
        # step and leave a trail of ever larger freed buffers behind.
        self.step = max(self.step, length)

    def snapshot(self) -> Snapshot:
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    @classmethod
    def restore(cls, snapshot: Snapshot, length: int) -> "KVLayerCache":
        keys, values = snapshot
        cache = cls()
        cache.update_and_fetch(keys[..., :length, :], values[..., :length, :])
        return cache

    def batch_row(self) -> "BatchKVLayerCache":
        return BatchKVLayerCache.row(self)


class BatchKVLayerCache(BatchKVCache):
    """mlx-lm's left-padded BatchKVCache with each row's padding also kept on the host, so dropping
    rows reads nothing from the device (mlx-lm's filter reads the padding back, which waits for the
    step in flight and so stalls the pipeline at every finishing row)."""

    def __init__(self, left_padding: list[int]):
        super().__init__(left_padding)
        self.padding = list(left_padding)

    @classmethod
    def row(cls, cache: KVCache) -> "BatchKVLayerCache":
        """One sequence's prefilled cache as a batch of one row."""
        batch = cls([0])
        batch.keys, batch.values = cache.keys[..., :cache.offset, :], cache.values[..., :cache.offset, :]
        batch.offset += cache.offset
        batch._idx = cache.offset
        return batch

    def filter(self, rows: list[int]) -> None:
        indices = mx.array(rows)
        self.keys, self.values = self.keys[indices], self.values[indices]
        self.offset, self.left_padding = self.offset[indices], self.left_padding[indices]
        self.padding = [self.padding[row] for row in rows]
        shift = min(self.padding)
        if shift > 0:  # drop the columns that are padding in every remaining row
            self.keys, self.values = self.keys[..., shift:, :], self.values[..., shift:, :]
            self._idx -= shift
            self.left_padding = self.left_padding - shift
            self.padding = [p - shift for p in self.padding]

    def extend(self, other: "BatchKVLayerCache") -> None:
        length = max(self._idx, other._idx)
        self.padding = ([p + length - self._idx for p in self.padding]
                        + [p + length - other._idx for p in other.padding])
        super().extend(other)


class RecurrentLayerCache(ArraysCache):
    """Fixed-size per-sequence state of a recurrent layer (e.g. a short convolution's last inputs
    and a linear-attention state): one array per slot, batch first, each row its own sequence.

    It folds every token in, so it is valid at exactly the length it was taken at. The same object
    serves one sequence and a batch: rows are joined by concatenation and dropped by indexing,
    with no padding (see the module docstring)."""

    trimmable = False

    def reserve(self, length: int) -> None:
        pass  # its size does not grow with the length

    def snapshot(self) -> Snapshot:
        if any(slot is None for slot in self.cache):
            raise ValueError("a recurrent cache has no state before its first token")
        return tuple(self.cache)

    @classmethod
    def restore(cls, snapshot: Snapshot, length: int) -> "RecurrentLayerCache":
        cache = cls(len(snapshot))
        cache.cache = list(snapshot)
        return cache

    def batch_row(self) -> "RecurrentLayerCache":
        return self

    def filter(self, rows: list[int]) -> None:
        super().filter(mx.array(rows))
