"""Sentence and screenshot embeddings from the generative model itself.

Embedding = mean over the input's tokens of the decoder's final hidden states (after the final
RMSNorm), L2-normalized. The work comes in units of at most `chunk` tokens, so a caller can run
other work between them and memory stays linear in the input's length:

- short inputs (at most `chunk` tokens) are right-padded into one batch per unit: with causal
  attention a real token never attends to the padding after it, so no extra mask is needed;
- a longer input is prefilled `chunk` tokens per unit through a KV cache, as generation does, and
  its hidden states are summed as they come.
"""

from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from ..models import VisionLanguageModel as Model
from ..models.base import Span
from ..runtime import prefill_chunk
from .prepare import PreparedPrompt


class EmbeddingJob:
    """Embeds a list of prompts one work unit at a time; `vectors` is complete once step() says so."""

    def __init__(self, model: Model, prompts: list, chunk: int):
        self.model, self.prompts, self.chunk = model, prompts, chunk
        self.vectors = np.zeros((len(prompts), model.config.text_config.hidden_size), dtype=np.float32)
        self.tokens_done, self.total_tokens = 0, sum(len(prompt.input_ids) for prompt in prompts)
        self._units = self._work()

    @property
    def done(self) -> bool:
        return self.tokens_done == self.total_tokens

    def step(self) -> bool:
        """Run the next work unit; True once every vector is done."""
        if not self.done:
            next(self._units)
        return self.done

    def _work(self) -> Iterator[None]:
        # Shortest first: similar lengths batch well, and long inputs come last, a chunk per unit.
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i].input_ids))
        short = [i for i in order if len(self.prompts[i].input_ids) <= self.chunk]
        batch: list[int] = []
        for index in short + [None]:
            longest = len(self.prompts[index].input_ids) if index is not None else 0
            if batch and (index is None or longest * (len(batch) + 1) > self.chunk):
                self.vectors[batch] = self._embed_batch(batch)
                yield
                batch = []
            if index is not None:
                batch.append(index)
        for index in order[len(short):]:
            yield from self._embed_chunked(index)

    def _embed_batch(self, indices: list[int]) -> np.ndarray:
        inputs = [PreparedPrompt(self.model, self.prompts[i]) for i in indices]
        length = max(item.length for item in inputs)
        rows = [item.embeds(0, item.length) for item in inputs]  # (embeds, deepstack) of each input
        embeds = mx.concatenate([mx.pad(row, [(0, 0), (0, length - row.shape[1]), (0, 0)]) for row, _ in rows])
        deepstack = _padded_deepstack([(row.shape[1], deep) for row, deep in rows], length, embeds.dtype)
        positions = np.zeros((inputs[0].positions.shape[0], len(inputs), length), dtype=np.int64)
        valid = np.zeros((len(inputs), length), dtype=np.float32)
        for row, item in enumerate(inputs):
            positions[:, row, :item.length] = item.positions
            valid[row, :item.length] = 1.0
        hidden = self.model.hidden([Span(embeds, mx.array(positions), deepstack=deepstack)])[0]
        weights = mx.array(valid)[..., None]
        pooled = (hidden.astype(mx.float32) * weights).sum(axis=1) / weights.sum(axis=1)
        self.tokens_done += int(valid.sum())
        return np.array(_normalized(pooled))

    def _embed_chunked(self, index: int) -> Iterator[None]:
        item = PreparedPrompt(self.model, self.prompts[index])
        cache = self.model.make_cache()
        for layer in cache:
            layer.reserve(item.length)
        total = mx.zeros((self.model.config.text_config.hidden_size,), dtype=mx.float32)
        for start in range(0, item.length, self.chunk):
            end = min(start + self.chunk, item.length)
            hidden = self.model.hidden([item.span(start, end, cache)])[0]
            total = total + hidden[0].astype(mx.float32).sum(axis=0)
            mx.eval(total, [c.state for c in cache])
            if end == item.length:
                self.vectors[index] = np.array(_normalized(total / item.length))
            self.tokens_done += end - start
            yield


def embed_prompts(model: Model, prompts: list, chunk: int | None = None) -> np.ndarray:
    """(len(prompts), hidden_size) float32 unit vectors, in input order, all units at once."""
    job = EmbeddingJob(model, prompts, chunk or prefill_chunk())
    while not job.step():
        pass
    return job.vectors


def _normalized(vectors: mx.array) -> mx.array:
    return vectors / mx.linalg.norm(vectors, axis=-1, keepdims=True)


def _padded_deepstack(rows: list[tuple[int, mx.array | None]], length: int, dtype: mx.Dtype) -> mx.array | None:
    """Each input's DeepStack input (levels, 1, its length, hidden) right-padded to `length` and
    stacked into a batch, zeros for inputs without one; None when none has any."""
    present = [deep for _, deep in rows if deep is not None]
    if not present:
        return None
    levels, _, _, hidden = present[0].shape
    return mx.concatenate([
        mx.pad(deep, [(0, 0), (0, 0), (0, length - size), (0, 0)]) if deep is not None
        else mx.zeros((levels, 1, length, hidden), dtype)
        for size, deep in rows], axis=1)
