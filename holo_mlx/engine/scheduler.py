"""Continuous batching: requests join and leave one running decode batch between steps.

Each step: drop cancelled requests, then one decoder pass that advances the prefill of at most one
newcomer by one chunk (so a 1.2k-token screenshot never freezes the batch for its whole prefill)
and decodes one token for every running request: the chunk and the batch share one read of the
weights. A request's KV lives in its own cache while it prefills and in a row of
the shared left-padded BatchKVCache once it decodes; its rope delta, sampler and text stream stay
on its Sequence.
"""

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache

from ..runtime import prefill_chunk
from .sampling import SamplingParams, TokenChooser
from .stream import GenerationChunk, TextStream
from ..models import VisionLanguageModel as Model
from ..models.base import Span
from .caches import PrefixCache, VisionCache, prefix_key, restore


@dataclass(eq=False)  # identity: two identical requests are still two rows of the batch
class Sequence:
    """One generation request and all of its state."""

    prompt: object  # holo_mlx.prompt.Prompt
    params: SamplingParams
    emit: Callable[[object], None]  # receives GenerationChunks, then None at the end, or an Exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0
    # set when the sequence starts
    chooser: TokenChooser | None = None
    stream: TextStream | None = None
    cache: list | None = None
    key: np.ndarray | None = None
    embeds: mx.array | None = None
    positions: mx.array | None = None
    prefilled: int = 0
    next_position: int = 0  # M-RoPE position of last_token (all three axes), from the request's rope delta
    last_token: int = 0


@dataclass
class StepStats:
    """Where the scheduler's time goes, summed over steps (the server exports them on /metrics)."""

    steps: int = 0
    host_seconds: float = 0.0  # building the next graph, sampling bookkeeping, detokenizing, emitting
    wait_seconds: float = 0.0  # blocked on the device for a step's results


class Scheduler:
    def __init__(self, model: Model, tokenizer, eos_token_ids: set[int], *, max_num_seqs: int = 8,
                 prefix_cache: PrefixCache | None = None, vision_cache: VisionCache | None = None):
        self.model, self.tokenizer, self.eos_token_ids = model, tokenizer, eos_token_ids
        self.max_num_seqs = max_num_seqs
        self.prefix_cache = prefix_cache or PrefixCache(0)
        self.vision_cache = vision_cache or VisionCache(0)
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.running: list[Sequence] = []
        self.batch_cache: list[BatchKVCache] | None = None
        self.stats = StepStats()

    # --- queue -------------------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def step(self) -> None:
        self._drop_cancelled()
        if self.prefilling is None and self.waiting and len(self.running) < self.max_num_seqs:
            sequence = self.waiting.popleft()
            self._guard(sequence, self._start, sequence)
        if self.prefilling is None and not self.running:
            return
        try:
            self._forward()
        except Exception as error:  # a failed pass fails the requests in it, not the engine
            for sequence in [*filter(None, [self.prefilling]), *self.running]:
                sequence.emit(error)
            self.prefilling, self.running, self.batch_cache = None, [], None

    def fail_all(self, error: Exception) -> None:
        """End every request with `error` and start empty: for a failure outside one request's work."""
        for sequence in [*self.waiting, *filter(None, [self.prefilling]), *self.running]:
            sequence.emit(error)
        self.waiting, self.prefilling, self.running, self.batch_cache = deque(), None, [], None

    def _guard(self, sequence: Sequence, work, *args) -> bool:
        """Run one request's own work; a failure ends that request only (and counts as finished)."""
        try:
            return work(*args)
        except Exception as error:
            if self.prefilling is sequence:
                self.prefilling = None
            sequence.emit(error)
            return True

    def _drop_cancelled(self) -> None:
        self.waiting = deque(s for s in self.waiting if not s.cancelled.is_set())
        if self.prefilling is not None and self.prefilling.cancelled.is_set():
            self.prefilling = None
        self._keep([s for s in self.running if not s.cancelled.is_set()])

    def _keep(self, sequences: list[Sequence]) -> None:
        if len(sequences) == len(self.running):
            return
        if not sequences:
            self.running, self.batch_cache = [], None
            return
        kept = set(map(id, sequences))
        rows = mx.array([row for row, s in enumerate(self.running) if id(s) in kept])
        for cache in self.batch_cache:
            cache.filter(rows)
        self.running = sequences

    # --- prefill -----------------------------------------------------------------------------------

    def _start(self, sequence: Sequence) -> None:
        model, prompt = self.model, sequence.prompt
        config = model.config
        ids = prompt.input_ids
        sequence.chooser = TokenChooser(sequence.params, self.eos_token_ids | set(sequence.params.stop_token_ids))
        sequence.stream = TextStream(self.tokenizer, sequence.params, self.eos_token_ids, len(ids))
        grids = [image.grid_thw for image in prompt.images]
        positions, delta = model.positions(ids, grids)
        sequence.key = prefix_key(ids, prompt.images, config.image_token_id)
        reused, entry = self.prefix_cache.lookup(sequence.key)
        reused = self._reusable(ids, min(reused, len(ids) - 1), config.image_token_id)
        sequence.cache = restore(entry, reused) if reused else model.make_cache()
        sequence.cached_tokens = reused

        # Only images that start after the reused prefix are encoded (or fetched from the cache).
        image_starts = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(ids) == config.image_token_id])) == 1)
        fresh = [image for image, start in zip(prompt.images, image_starts) if start >= reused]
        features = None
        if fresh:
            features = mx.concatenate([self.vision_cache.features(image, self._encode) for image in fresh])
        sequence.embeds = model.embed(ids[reused:], features)
        sequence.positions = mx.array(positions[:, reused:])[:, None, :]
        sequence.prefilled = 0
        sequence.next_position = len(ids) + delta - 1  # advanced as each sampled token is fed back
        self.prefilling = sequence

    def _encode(self, image) -> mx.array:
        return self.model.encode_images([image.pixel_values], [image.grid_thw])

    @staticmethod
    def _reusable(ids: list[int], length: int, image_token_id: int) -> int:
        """Back a prefix match off to an image boundary: images are encoded whole."""
        while 0 < length < len(ids) and ids[length] == image_token_id and ids[length - 1] == image_token_id:
            length -= 1
        return length

    # --- one decoder pass ---------------------------------------------------------------------------

    def _forward(self) -> None:
        """The newcomer's next prefill chunk and one token for every running row, in one pass."""
        model = self.model
        prefilling, running = self.prefilling, self.running
        spans, finishing = [], False
        if prefilling is not None:
            start, end = prefilling.prefilled, prefilling.prefilled + prefill_chunk()
            spans.append(Span(prefilling.embeds[:, start:end], prefilling.positions[:, :, start:end], prefilling.cache))
            prefilling.prefilled = min(end, prefilling.embeds.shape[1])
            finishing = prefilling.prefilled == prefilling.embeds.shape[1]
        if running:
            tokens = mx.array([[s.last_token] for s in running])
            positions = np.broadcast_to(np.array([[s.next_position] for s in running]), (3, len(running), 1))
            spans.append(Span(model.embed_tokens(tokens), mx.array(positions), self.batch_cache))
        hidden = model.hidden(spans, last_only=True)

        # One lm_head pass for the newcomer's last prompt position (when its prompt ends here) and the batch.
        sampled = ([prefilling] if finishing else []) + running
        last = ([hidden[0][:, -1]] if finishing else []) + ([hidden[-1][:, -1]] if running else [])
        chosen = {}
        if last:
            logits = model.logits(mx.concatenate(last))
            for row, sequence in enumerate(sampled):  # a row's own failure (its grammar) ends that row only
                self._guard(sequence, lambda s=sequence, row=row: chosen.setdefault(
                    id(s), s.chooser(logits[row:row + 1])))
        mx.eval(list(chosen.values()), [c.state for c in prefilling.cache] if prefilling is not None else [])
        picks = {key: (token.item(), logprobs[0]) for key, (token, logprobs) in chosen.items()}

        kept = []
        for sequence in running:
            if id(sequence) in picks and not self._guard(sequence, self._emit, sequence, *picks[id(sequence)]):
                kept.append(sequence)
        self._keep(kept)
        if finishing and id(prefilling) in picks:
            self._guard(prefilling, self._join, prefilling, *picks[id(prefilling)])
        elif finishing:
            self.prefilling = None

    def _join(self, sequence: Sequence, token: int, logprobs: mx.array) -> None:
        """A prefilled newcomer: cache its prompt, hand out its first token, move it into the batch."""
        self.prefilling = None
        self.prefix_cache.store(sequence.key, sequence.cache)
        sequence.embeds = sequence.positions = None
        if self._emit(sequence, token, logprobs):
            return
        rows = [BatchKVCache.merge([layer]) for layer in sequence.cache]
        sequence.cache = None
        if self.batch_cache is None:
            self.batch_cache = rows
        else:
            for cache, row in zip(self.batch_cache, rows):
                cache.extend(row)
        self.running.append(sequence)

    def _emit(self, sequence: Sequence, token: int, logprobs: mx.array) -> bool:
        """Hand one token's chunk to the requester; True when the sequence has finished."""
        chunk: GenerationChunk = sequence.stream.add(token, logprobs)
        sequence.emit(chunk)
        sequence.last_token = token
        sequence.next_position += 1
        if chunk.finish_reason:
            sequence.emit(None)
            return True
        return False
