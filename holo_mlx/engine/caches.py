"""Byte-bounded LRU caches: vision features by image content, prompt caches by token prefix.

Prefix keys fold each image's content hash into its placeholder tokens, so two different
screenshots never share KV just because their image-token runs are identical.
"""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..models.cache import Snapshot, snapshot_bytes


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
    """A prompt's per-layer caches as snapshots (models/cache.py): every layer at the prompt's end,
    and the layers that cannot be trimmed also at earlier boundaries (image and message ends)."""

    key: np.ndarray
    kinds: list[type]  # each layer's cache class
    layers: list[Snapshot]  # each layer at len(key)
    boundaries: dict[int, list[Snapshot | None]]  # length -> the non-trimmable layers' state there

    def __post_init__(self):
        # Asked of every entry at every lookup: decided once.
        self.resumes_anywhere = all(kind.trimmable for kind in self.kinds)

    def usable(self, length: int) -> int:
        """The longest stored prefix of at most `length` tokens that every layer can resume from."""
        if self.resumes_anywhere:
            return min(length, len(self.key))
        return max((stop for stop in [*self.boundaries, len(self.key)] if stop <= length), default=0)

    def restore(self, length: int) -> list:
        """Fresh per-layer caches holding the first `length` tokens (a length `usable` gave)."""
        at = self.layers if length == len(self.key) else self.boundaries.get(length)
        return [kind.restore(whole if kind.trimmable else at[index], length)
                for index, (kind, whole) in enumerate(zip(self.kinds, self.layers))]

    @property
    def nbytes(self) -> int:
        return sum(map(snapshot_bytes, self.layers)) + \
            sum(snapshot_bytes(snapshot) for layers in self.boundaries.values() for snapshot in layers)


class PrefixCache(LRUBytes):
    """Caches of earlier prompts; a new prompt resumes from the longest stored prefix of its key
    that every layer can resume from."""

    def __init__(self, max_bytes: int, min_tokens: int = 16):
        super().__init__(max_bytes)
        self.min_tokens = min_tokens
        self.cached_tokens = 0

    def lookup(self, key: np.ndarray, usable: Callable[[int], int] = lambda length: length
               ) -> tuple[int, PrefixEntry | None]:
        """The longest reusable prefix (its length and entry); `usable` shortens a shared length to
        one the new prompt can resume at (not inside an image, short of its end)."""
        best, best_entry, best_id = 0, None, None
        for entry_id, (entry, _) in self.entries.items():
            shared = min(len(entry.key), len(key))
            mismatch = np.flatnonzero(entry.key[:shared] != key[:shared])
            length = entry.usable(usable(int(mismatch[0]) if len(mismatch) else shared))
            if length > best:
                best, best_entry, best_id = length, entry, entry_id
        if best_entry is None:
            self.misses += 1
            return 0, None
        self.hits += 1
        self.entries.move_to_end(best_id)
        return best, best_entry

    def store(self, key: np.ndarray, caches: list, boundaries: dict[int, list[Snapshot | None]]) -> None:
        """Keep a prompt's caches (which hold exactly `key`) and the snapshots its prefill took."""
        if len(key) < self.min_tokens:
            return
        entry = PrefixEntry(key.copy(), [type(cache) for cache in caches], [cache.snapshot() for cache in caches],
                            {length: layers for length, layers in boundaries.items() if length >= self.min_tokens})
        mx.async_eval(entry.layers)  # copies of the prefix, made while the device runs the next step
        self.put(key.tobytes(), entry, entry.nbytes)
