"""Byte-bounded LRU caches: vision features by image content, prompt KV by token prefix.

Prefix keys fold each image's content hash into its placeholder tokens, so two different
screenshots never share KV just because their image-token runs are identical.
"""

from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache


class LRUBytes:
    """OrderedDict LRU evicting least-recently used entries beyond a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key):
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return value[0]

    def put(self, key, value, size: int) -> None:
        if size > self.max_bytes:
            return
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[1]
        self.entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.bytes -= evicted


class VisionCache(LRUBytes):
    """Image features (tokens, hidden) keyed by ProcessedImage.digest (pixels + resize settings)."""

    def features(self, image, encode) -> mx.array:
        cached = self.get(image.digest)
        if cached is None:
            cached = encode(image)
            mx.eval(cached)
            self.put(image.digest, cached, cached.nbytes)
        return cached


def prefix_key(input_ids: list[int], images: list, image_token_id: int) -> np.ndarray:
    """Token ids with every image token replaced by a negative id derived from that image's content."""
    key = np.asarray(input_ids, dtype=np.int64).copy()
    slots = np.flatnonzero(key == image_token_id)
    start = 0
    for image in images:
        count = image.num_tokens
        key[slots[start:start + count]] = -1 - int(image.digest[:15], 16)
        start += count
    return key


@dataclass
class PrefixEntry:
    key: np.ndarray
    layers: list[tuple[mx.array, mx.array]]  # per decoder layer: keys, values (1, heads, length, dim)


class PrefixCache(LRUBytes):
    """KV of earlier prompts; a new prompt reuses the longest stored prefix of its key."""

    def __init__(self, max_bytes: int, min_tokens: int = 16):
        super().__init__(max_bytes)
        self.min_tokens = min_tokens
        self.cached_tokens = 0

    def lookup(self, key: np.ndarray) -> tuple[int, PrefixEntry | None]:
        best, best_entry, best_id = 0, None, None
        for entry_id, (entry, _) in self.entries.items():
            shared = min(len(entry.key), len(key))
            mismatch = np.flatnonzero(entry.key[:shared] != key[:shared])
            length = int(mismatch[0]) if len(mismatch) else shared
            if length > best:
                best, best_entry, best_id = length, entry, entry_id
        if best_entry is None:
            self.misses += 1
            return 0, None
        self.hits += 1
        self.entries.move_to_end(best_id)
        return best, best_entry

    def store(self, key: np.ndarray, cache: list[KVCache]) -> None:
        length = cache[0].offset
        if length < self.min_tokens:
            return
        layers = [(c.keys[..., :length, :], c.values[..., :length, :]) for c in cache]
        mx.async_eval(layers)  # copies of the prefix, made while the device runs the next step
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        self.put(key[:length].tobytes(), PrefixEntry(key[:length].copy(), layers), size)


def restore(entry: PrefixEntry, length: int) -> list[KVCache]:
    """Fresh per-layer caches holding the first `length` tokens of a stored prefix."""
    caches = []
    for keys, values in entry.layers:
        cache = KVCache()
        cache.update_and_fetch(keys[..., :length, :], values[..., :length, :])
        caches.append(cache)
    return caches


class BatchCache(BatchKVCache):
    """mlx-lm's left-padded BatchKVCache with each row's padding also kept on the host, so dropping
    rows reads nothing from the device (mlx-lm's filter reads the padding back, which waits for the
    step in flight and so stalls the pipeline at every finishing row)."""

    def __init__(self, left_padding: list[int]):
        super().__init__(left_padding)
        self.padding = list(left_padding)

    @classmethod
    def row(cls, cache: KVCache) -> "BatchCache":
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

    def extend(self, other: "BatchCache") -> None:
        length = max(self._idx, other._idx)
        self.padding = ([p + length - self._idx for p in self.padding]
                        + [p + length - other._idx for p in other.padding])
        super().extend(other)
